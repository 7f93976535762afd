"""Audit archives what the log takes within moments, never an ack_wait later: each of a run of
enrollments, one after another, is found in the archive soon after its certificate is issued (the
batch consumer's 3 s redelivery stall, seen with FastStream's batch subscriber, would show here)."""

from __future__ import annotations

import asyncio
import time

from harness import Harness

ACK_WAIT_S = 3.0


async def test_each_issued_certificate_is_archived_well_within_ack_wait(stack: Harness) -> None:
    lags = []
    async with stack.client() as client:
        for i in range(15):
            issued = await stack.enroll(f"lag{i}.corp.internal")
            started = time.monotonic()
            while await client.issued_certificate(issued.aggregate_id) is None:
                assert time.monotonic() - started < 2 * ACK_WAIT_S, f"enrollment {i} not archived"
                await asyncio.sleep(0.02)
            lags.append(time.monotonic() - started)
    assert max(lags) < ACK_WAIT_S / 2, f"archive lags (s): {[round(lag, 2) for lag in lags]}"
