"""The agent's settings and its config file: which certificates it looks after, and how."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    """When the agent renews and how it backs off (`CERTBUS_AGENT_*`, or `[agent]` in its config file)."""

    model_config = SettingsConfigDict(env_prefix="CERTBUS_AGENT_", extra="forbid")

    # The name the agent writes into its requests' bodies: data only, since admission records the
    # identity the agent connected as (CERTBUS_IDENTITY / its NKey), whatever this says.
    requester: str = "agent"
    renew_fraction: float = Field(default=1 / 3, gt=0, lt=1)  # renew when less than this much lifetime is left
    check_interval_s: float = Field(default=60.0, gt=0)  # the timer: re-read the certificate files
    transient_base_s: float = Field(default=1.0, gt=0)
    transient_cap_s: float = Field(default=300.0, gt=0)
    terminal_base_s: float = Field(default=600.0, gt=0)
    terminal_cap_s: float = Field(default=6 * 3600.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    command_timeout_s: float = Field(default=60.0, gt=0)


class CertificateEntry(BaseModel):
    """One certificate the agent looks after (a `[[certificate]]` table of the config file)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    cert: Path
    key: Path
    chain: Path | None = None  # default: chain.pem beside cert.pem, else <cert stem>.chain.pem
    profile: str | None = None  # default: the current certificate's profile
    reload: str | None = Field(default=None, alias="exec")  # shell command run after a renewal
    token_command: str | None = None  # prints a one-time enrollment token: re-enroll when renewal is refused
    validity_days: int | None = None

    @property
    def chain_path(self) -> Path:
        """Where the chain is written."""
        if self.chain is not None:
            return self.chain
        return self.cert.with_name("chain.pem" if self.cert.name == "cert.pem" else f"{self.cert.stem}.chain.pem")

    def beside_key(self, suffix: str) -> Path:
        """A file of the renewal in progress, beside the key (`.next`, `.renewal.json`, `.old`)."""
        return self.key.with_name(self.key.name + suffix)


class AgentConfig(BaseModel):
    """The agent's TOML config file: `[agent]` settings and one or more `[[certificate]]` entries."""

    model_config = ConfigDict(extra="forbid")

    agent: dict[str, Any] = {}
    certificate: list[CertificateEntry] = Field(min_length=1)


def load_config(path: Path) -> tuple[AgentSettings, list[CertificateEntry]]:
    """Settings and entries from a TOML file (relative paths are relative to the file); ValueError says
    what to change."""
    try:
        data = tomllib.loads(path.read_text())
        config = AgentConfig.model_validate(data)
        settings = AgentSettings(**config.agent)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the agent config ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None
    base = path.parent
    entries = [
        entry.model_copy(
            update={
                name: base / value
                for name in ("cert", "key", "chain")
                if (value := getattr(entry, name)) is not None and not value.is_absolute()
            }
        )
        for entry in config.certificate
    ]
    check_entries(entries)
    return settings, entries


def check_entries(entries: list[CertificateEntry]) -> None:
    """Refuse two entries that share a key or certificate file (they would renew over each other)."""
    for name in ("key", "cert"):
        paths = [getattr(e, name).resolve() for e in entries]
        shared = sorted({str(p) for p in paths if paths.count(p) > 1})
        if shared:
            raise ValueError(f"two [[certificate]] entries use the same {name} file {shared[0]}: give each its own")
