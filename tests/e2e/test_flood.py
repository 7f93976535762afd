"""One requester publishing as fast as it can does not hold up another's enrollment for more than a
bounded time, and neither the ingress stream nor the log grows beyond its bounds: the server keeps
at most `ingress_backlog` of one identity's requests waiting, and admission lets through at most
`admission_rate_per_min` of them a minute (and as many refusals), refusing the rest."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest

from harness import Harness
from shared.pki.crypto import build_csr, generate_key
from signals import applied

pytestmark = pytest.mark.e2e
# The flooding requester, in a process of its own (as it would be): as many enrollment requests as
# the server takes on its ingress subject, 128 in flight; prints "full" when the server first refuses
# one for a full backlog (the flood is in full swing), goes on for the given seconds, prints the counts.
FLOODER = """
import asyncio, json, sys, time
import nats, nats.js.errors
from shared.client.sdk import BACKLOG_FULL
from shared.pki.holder import enrollment_request
from shared.contract.ingress import ingress_subject
from shared.base.settings import CommonSettings

async def main():
    given = json.loads(sys.argv[1]); seconds = float(sys.argv[2])
    s = CommonSettings(**given["settings"])
    nc = await nats.connect(s.nats_url, **s.connect_options())
    js = nc.jetstream(prefix=s.js_prefix)
    subject = ingress_subject(s.ingress_root, s.identity, "enroll")
    counts = {"accepted": 0, "backlog_full": 0, "other": 0}
    deadline, full = time.monotonic() + 60, False  # never full within a minute: no flood, give up
    while time.monotonic() < deadline:
        requests = [enrollment_request(given["csr"], given["token"], "alice") for _ in range(128)]
        results = await asyncio.gather(
            *(js.publish(subject, r.model_dump_json().encode(), stream=s.ingress_stream, timeout=5) for r in requests),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, nats.js.errors.APIError) and r.err_code == BACKLOG_FULL:
                counts["backlog_full"] += 1
            elif isinstance(r, BaseException):
                counts["other"] += 1
            else:
                counts["accepted"] += 1
        if counts["backlog_full"] and not full:
            print("full", flush=True)
            deadline, full = time.monotonic() + seconds, True
    await nc.close()
    print(json.dumps(counts))

asyncio.run(main())
"""
BACKLOG = 200
RATE = 120  # requests admitted per identity and minute
FLOOD_S = 12.0


@pytest.fixture
async def flooded(database_url: str, tmp_path: Path) -> Harness:
    h = Harness(database_url, tmp_path)
    h.common["ingress_backlog"] = BACKLOG
    h.overrides["enrollment"] = {"admission_rate_per_min": RATE}
    try:
        await h.open()
        yield await h.serve()
    finally:
        await h.close()


async def _enroll_seconds(h: Harness, name: str) -> float:
    started = time.perf_counter()
    await h.enroll(name)
    return time.perf_counter() - started


async def test_a_flooding_requester_delays_another_by_a_bounded_time_and_the_streams_stay_bounded(
    flooded: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    h = flooded
    quiet = [await _enroll_seconds(h, f"quiet{i}.corp.internal") for i in range(3)]
    settings = h.common_settings
    log_before = (await _stream_state(h, settings.stream))[0]

    csr = build_csr(generate_key("ec-p256"), ["flood.corp.internal"]).decode()
    token = h.token("flood.corp.internal")  # one token for all: spent once, then every request is refused
    flooder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FLOODER,
        json.dumps({"settings": h.client_settings("mallory").model_dump(mode="json"), "csr": csr, "token": token}),
        str(FLOOD_S),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    deepest = 0
    stop = asyncio.Event()

    async def watch_backlog() -> None:
        nonlocal deepest
        while not stop.is_set():
            deepest = max(deepest, (await _stream_state(h, settings.ingress_stream))[0])
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch_backlog())
    try:
        assert flooder.stdout is not None
        swing = await asyncio.wait_for(flooder.stdout.readline(), timeout=90)
        assert swing == b"full\n", "the flood never filled mallory's backlog: it was not a flood"
        during = []
        deadline = time.monotonic() + FLOOD_S - 1.0
        i = 0
        while time.monotonic() < deadline:
            during.append(await asyncio.wait_for(_enroll_seconds(h, f"during{i}.corp.internal"), timeout=60))
            i += 1
            await asyncio.sleep(0.2)
    finally:
        stdout, _ = await asyncio.wait_for(flooder.communicate(), timeout=60)
        stop.set()
        await watcher
    outcome = json.loads(stdout)
    await applied(h, timeout=60)  # what the flood left on the ingress stream is admitted or refused
    log_after = (await _stream_state(h, settings.stream))[0]

    rejected = [json.loads(m.data) for m in await h.stream_messages(f"{settings.subject_root}.cert.*.rejected")]
    codes: dict[str, int] = {}
    for event in rejected:
        if event.get("requester") == "mallory" or event.get("rejected_by") == "enrollment":
            for reason in event.get("reasons", []):
                codes[reason["code"]] = codes.get(reason["code"], 0) + 1
    minutes = (FLOOD_S + 5.0) / 60 + 1  # the windows the flood touched (at most)
    with capsys.disabled():
        print(
            f"\nflood: {outcome['accepted']} of mallory's requests taken by the ingress stream, "
            f"{outcome['backlog_full']} refused by the server (backlog full), {outcome['other']} other errors; "
            f"deepest ingress backlog {deepest} (bound {BACKLOG}); log grew by {log_after - log_before} messages; "
            f"rejections by code {codes}\n"
            f"another requester's enrollment: quiet median {statistics.median(quiet):.2f} s, during the flood "
            f"median {statistics.median(during):.2f} s, max {max(during):.2f} s over {len(during)} enrollments\n"
        )
    assert outcome["backlog_full"] > 0, "the flood never filled mallory's backlog: it was not a flood"
    assert deepest <= BACKLOG + 64, deepest  # the server's per-identity bound (the other requester's few aside)
    assert max(during) < 5.0, during  # bounded, however long the flood
    assert codes.get("rate_limited", 0) > 0
    # What reached the log: at most RATE admitted and RATE refusals a minute from mallory, plus the
    # other requester's few requests and their decisions.
    assert log_after - log_before <= 2 * RATE * minutes * 3 + 20 * len(during), log_after - log_before


async def _stream_state(h: Harness, stream: str) -> tuple[int, int]:
    nc = await h.connect("admin")
    try:
        info = await h.js(nc).stream_info(stream)
        return info.state.messages, info.state.bytes
    finally:
        await nc.close()
