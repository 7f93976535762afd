"""`certbus` listings written into a file (a pipe, a redirect): plain tab-separated rows, every value whole."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

from harness import Harness, eventually
from shared.contract.profiles import Profile
from shared.pki.crypto import build_csr, generate_key

# As long as each may be: a profile name (63), a requester identity (64), a subject's common name (64).
PROFILE = "internal-payments-gateways-behind-the-eu-west-firewall-rotating"
REQUESTER = "payments-gateway-deployment-pipeline-of-the-eu-west-region-prod1"
HOST = "payments-gateways-eu-west-serving-the-checkout-api.corp.internal"


async def certbus_into_file(stack: Harness, path: Path, *args: str) -> list[list[str]]:
    """Run `certbus ARGS > path` (stdout a regular file, not a terminal) and split what it wrote
    into lines of tab-separated fields."""
    with path.open("w") as stdout:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shared.client.cli.main", *args, env=stack.cli_env(), stdout=stdout, stderr=PIPE
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, stderr.decode()
    return [line.split("\t") for line in path.read_text().splitlines()]


async def test_listings_written_to_a_file_are_tab_separated_rows_with_every_value_whole(
    stack: Harness, tmp_path: Path
) -> None:
    assert len(PROFILE) == 63 and len(REQUESTER) == 64 and len(HOST) == 64
    await stack.apply_profiles(Profile(name=PROFILE, usage="server", dns_suffixes=["corp.internal"]))
    await stack.identity(REQUESTER)
    async with stack.client(REQUESTER) as c:
        csr = build_csr(generate_key("ec-p256"), [HOST]).decode()
        issued = await c.enroll(csr, stack.token(HOST, profile=PROFILE), profile=PROFILE)

    async def archived() -> bool:
        answer = await stack.cli("audit", "history", issued.serial, "--json")
        return answer.returncode == 0 and '"CertificateIssued"' in answer.stdout

    await eventually(archived)
    header, *events = await certbus_into_file(stack, tmp_path / "history.txt", "audit", "history", issued.serial)
    assert header == ["seq", "when (UTC)", "event", "who", "by service", "detail"]
    assert [row[2] for row in events] == ["EnrollmentRequested", "EnrollmentApproved", "CertificateIssued"]
    assert [len(row) for row in events] == [6, 6, 6]
    requested, _, certified = events
    assert (requested[3], requested[5]) == (REQUESTER, f"profile {PROFILE}")
    facts = certified[5].split("; ")
    assert facts[:2] == [HOST, f"profile {PROFILE}"] and f"serial {issued.serial}" in facts

    header, *profiles = await certbus_into_file(stack, tmp_path / "profiles.txt", "profile", "list")
    assert header == ["name", "usage", "names", "keys", "validity (d)", "approval", "lint", "applied by"]
    [row] = [row for row in profiles if row[0] == PROFILE]
    assert row[1:3] == ["server", "*.corp.internal"]

    header, *requests = await certbus_into_file(stack, tmp_path / "requests.txt", "requests", "list")
    assert header == ["request", "status", "profile", "names", "requester", "requested (UTC)", "expires / serial"]
    [row] = [row for row in requests if row[2] == PROFILE]
    assert row[0] == issued.aggregate_id
    assert (row[1], row[3], row[4], row[6]) == ("issued", HOST, REQUESTER, issued.serial)
