"""WakeableLoop stops when asked, even when a wake-up and the stop arrive together."""

from __future__ import annotations

import asyncio

from shared.runtime.loops import WakeableLoop


async def test_a_loop_woken_as_it_is_stopped_still_stops() -> None:
    # On Python 3.11, asyncio.wait_for swallowed a cancellation that arrived as the awaited event
    # was set, and such a loop (the CRL publisher, woken by a revocation) never stopped.
    for _ in range(300):
        steps = 0

        async def step() -> None:
            nonlocal steps
            steps += 1

        loop = WakeableLoop("t", step, idle_s=5.0)
        loop.start()
        await asyncio.sleep(0)
        loop.wake()
        await asyncio.wait_for(loop.stop(), timeout=2)


async def test_a_loop_runs_its_step_when_woken_and_on_its_timer() -> None:
    ran = asyncio.Event()
    count = 0

    async def step() -> None:
        nonlocal count
        count += 1
        ran.set()

    loop = WakeableLoop("t", step, idle_s=0.05)
    loop.start()
    await asyncio.wait_for(ran.wait(), timeout=2)  # the timer
    ran.clear()
    loop.wake()
    await asyncio.wait_for(ran.wait(), timeout=2)
    await loop.stop()
    assert count >= 2
