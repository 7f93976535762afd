"""`certbus agent`: keeps certificates fresh and their old keys destroyed, with no human in the loop
(the loop in `loop`, its settings and config file in `config`, per-certificate state and backoff in
`state`, installation and commands in `host`)."""

from shared.client.agent.config import AgentConfig, AgentSettings, CertificateEntry, check_entries, load_config
from shared.client.agent.host import CommandFailed, CommandResult, install, run_command
from shared.client.agent.loop import Agent, AgentClient, NotConnected
from shared.client.agent.state import Backoff, RenewalState, Tracked, renewal_point

__all__ = [
    "Agent",
    "AgentClient",
    "AgentConfig",
    "AgentSettings",
    "Backoff",
    "CertificateEntry",
    "CommandFailed",
    "CommandResult",
    "NotConnected",
    "RenewalState",
    "Tracked",
    "check_entries",
    "install",
    "load_config",
    "renewal_point",
    "run_command",
]
