"""bench.profile: py-spy's raw samples summarised by frame, idle waits left out."""

from __future__ import annotations

from pathlib import Path

from bench.profile import summarise


def test_busy_samples_are_shared_by_frame_and_idle_waits_are_left_out(tmp_path: Path) -> None:
    raw = tmp_path / "signing.raw"
    raw.write_text(
        "process 1:main;run (shared/runtime/service.py:10);sign (services/signing/issuance.py:5) 30\n"
        "process 1:main;run (shared/runtime/service.py:10);write (asyncpg/connection.py:7) 10\n"
        "process 1:main;run (shared/runtime/service.py:12);EpollSelector.select (selectors.py:468) 60\n"
    )
    text = summarise(raw)
    assert text.startswith("signing: 40 busy samples, 60 idle")
    assert "100.0%  run (shared/runtime/service.py)" in text  # line numbers folded into one frame
    assert " 75.0%  sign (services/signing/issuance.py)" in text
    assert "select" not in text


def test_a_process_that_was_idle_throughout_says_so(tmp_path: Path) -> None:
    raw = tmp_path / "audit.raw"
    raw.write_text("process 1:main;Condition.wait (threading.py:327) 5\n")
    assert summarise(raw) == "audit: no busy samples (5 idle)\n"
