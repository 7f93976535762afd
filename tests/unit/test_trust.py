"""shared.trust.accounts: the NATS configuration is generated from one source, and says what the code says."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deploy.local.devstack import nats_server_binary
from shared.admin import TEMPLATE_HEADER
from shared.base.settings import AuditSettings, CommonSettings, SigningSettings, ValidationSettings
from shared.contract.events import EVENT_TYPES
from shared.trust.accounts import (
    ACCOUNTS,
    DURABLES,
    SERVICES,
    Identity,
    Names,
    heard,
    jetstream_api,
    publishes,
    render,
    template_identities,
)
from shared.trust.identities import new_seed, public_key

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "nats"
NAMES = Names.of(CommonSettings())


def test_the_committed_deployment_configuration_is_what_the_code_renders() -> None:
    expected = TEMPLATE_HEADER + render(template_identities(), NAMES)
    assert (DEPLOY / "accounts.conf").read_text() == expected, "run `certbus-admin render > deploy/nats/accounts.conf`"


def test_nats_server_accepts_the_deployment_configuration(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update({f"{i.name.upper()}_NKEY": public_key(new_seed()) for i in template_identities()})
    env.update(
        NATS_ROUTE_PASSWORD="x", NATS_ROUTE_1="nats://route:x@127.0.0.1:1", NATS_ROUTE_2="nats://route:x@127.0.0.1:2"
    )
    env["NATS_ROUTE_3"] = "nats://route:x@127.0.0.1:3"
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(DEPLOY / "nats-1.conf")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_each_event_subject_is_exported_to_its_one_publisher_only() -> None:
    conf = render(template_identities(), NAMES)
    for cls in EVENT_TYPES:
        subject = cls.filter(NAMES.subject_root)
        lines = [line for line in conf.splitlines() if f'{{service: "{subject}"' in line]
        assert lines == [f'      {{service: "{subject}", accounts: ["{ACCOUNTS[cls.publisher]}"]}}'], cls.__name__


def test_a_requester_may_publish_only_its_own_ingress_subjects_and_read_only_its_own_inbox() -> None:
    identities = [*template_identities(), Identity("alice", "requester", public_key(new_seed()))]
    conf = render(identities, NAMES)
    alice = next(line for line in conf.splitlines() if "alice" in line and "nkey" in line)
    assert f'"{NAMES.ingress_root}.alice.*"' in alice
    assert "_INBOX_alice.>" in alice and "_INBOX_requester" not in alice
    assert f'"{NAMES.subject_root}.' not in alice.split("subscribe")[0]  # publishes nothing on the log


def test_the_admin_publishes_no_event_and_no_request_and_no_identity_lives_in_the_logs_account() -> None:
    conf = render(template_identities(), NAMES)
    admin = next(line for line in conf.splitlines() if "ADMIN_NKEY" in line)
    assert f'publish: {{allow: ["{NAMES.js_prefix}.>"]}}' in admin  # the imported JetStream API only
    log_account = conf.split("  CERTBUS {")[1].split("\n  }\n")[0]
    assert "users: [\n    ]" in log_account
    imports = [line for line in conf.split("  ADMIN {")[1].split("\n  }\n")[0].splitlines() if "account:" in line]
    assert imports == [f'      {{service: {{account: "CERTBUS", subject: "$JS.API.>"}}, to: "{NAMES.js_prefix}.>"}}']


@pytest.mark.parametrize("role", ["requester", "operator", "validation"])
def test_what_a_client_hears_is_republished_from_the_log(role: str) -> None:
    conf = render(template_identities(), NAMES)
    for subject in heard(role, NAMES):  # type: ignore[arg-type]
        assert f'to: "{subject}"' in conf


def test_no_identity_may_take_a_service_or_admin_name() -> None:
    with pytest.raises(ValueError):
        render([Identity("signing", "requester", "UX")], NAMES)
    with pytest.raises(ValueError):
        Identity("not-signing", "signing", "UX")


def test_operators_publish_only_operator_commands() -> None:
    assert all(
        cls.publisher == "operator"
        for cls in EVENT_TYPES
        if cls.filter(NAMES.subject_root) in publishes("operator", NAMES)
    )


def test_every_service_may_read_the_log_by_sequence_but_not_the_ingress_stream() -> None:
    """Its outbox reads back the message the log holds under an event id answered `duplicate`."""
    for service in SERVICES:
        gets = [call for call in jetstream_api(service, NAMES) if call.startswith("STREAM.MSG.GET.")]
        assert f"STREAM.MSG.GET.{NAMES.stream}" in gets, service
        assert f"STREAM.MSG.GET.{NAMES.ingress_stream}" not in gets, service


def test_the_durables_are_the_ones_the_services_register(tmp_path: Path) -> None:
    from services.audit.app import build as audit
    from services.enrollment.app import build as enrollment
    from services.revocation.app import build as revocation
    from services.signing.app import build as signing
    from services.validation.app import build as validation

    builders = {"enrollment": enrollment, "signing": signing, "validation": validation, "revocation": revocation}
    builders["audit"] = audit
    settings = {
        "signing": SigningSettings(ca_passphrase="x" * 20, key_dir=tmp_path / "keys"),
        "audit": AuditSettings(checkpoint_key_file=tmp_path / "audit.key.pem"),
        "validation": ValidationSettings(
            ocsp_key_dir=tmp_path / "ocsp", ocsp_provisioner_key_file=tmp_path / "ocsp-provisioner.key.pem"
        ),
    }
    for service in SERVICES:
        _, rt = builders[service](settings.get(service))  # type: ignore[operator]
        registered = {*rt.consumers, *rt.ingress_consumers}
        assert registered == {f"{service}-{purpose}" for purpose, _ in DURABLES[service]}, service
