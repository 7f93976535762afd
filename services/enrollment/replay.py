"""What enrollment already said, read from the log, so that rebuilding its tables says nothing twice.

Enrollment's tables are a projection of the log: dropped, they are rebuilt by reading it again from
sequence 1. Its decisions (approved, rejected, pending) are events on the log too, but each comes
after the request it answers, so while a request is re-read its old decision has not been re-read
yet. Enrollment therefore asks the stream, for a request that was on the log before this process
started (a rebuild, or requests that arrived while enrollment was down), whether one of its answers
(pending, approved, rejected), each on its own subject (`<root>.cert.<request id>.<verb>`), followed
it. If so, the request is judged again to rebuild the tables, and nothing is published. Not the last
message on the request's subjects: an operator's approval that is one of two needed answers nothing,
yet follows the request's `pending`. A request that arrives while enrollment runs costs nothing: it
is newer than the start.

The timers (pending approvals' expiry, the renewal schedule) wait until the consumer has caught up
with the log once, so that they never act on a state the log has already moved past.
"""

from __future__ import annotations

import logging

from nats.js.errors import NotFoundError

from shared.contract.events import EnrollmentApproved, EnrollmentPending, EnrollmentRejected
from shared.runtime.service import Runtime

log = logging.getLogger("certbus.enrollment.replay")

# Enrollment's answers to a request or to an operator's decision on it (approved first: the most common).
_ANSWERS = tuple(answer.verb for answer in (EnrollmentApproved, EnrollmentRejected, EnrollmentPending))


class LogPosition:
    """Where the log stood when this process started, and whether the consumer has caught up since."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self.start_seq = 0
        self._caught_up = False
        self._told = False

    async def mark_start(self) -> None:
        """Remember the stream's last sequence (call at start, before the consumer runs)."""
        rt = self._rt
        self.start_seq = (await rt.js.stream_info(rt.settings.stream)).state.last_seq

    async def answered(self, request_id: str, seq: int) -> bool:
        """Whether an answer to request `request_id` (or to the operator's decision on it, at log
        position `seq`) is already on the log after `seq`."""
        if seq > self.start_seq:
            return False  # newer than this process: nothing can have answered it before
        rt = self._rt
        for verb in _ANSWERS:
            try:
                last = await rt.js.get_last_msg(rt.settings.stream, f"{rt.root}.cert.{request_id}.{verb}")
            except NotFoundError:
                continue
            if last.seq is not None and last.seq > seq:
                return True
        return False

    async def caught_up(self) -> bool:
        """Whether the `requests` consumer has applied the whole log once since this process started.

        Only a consumer that starts behind (a rebuild, a restart after downtime) can have unread
        events that change what a timer would do; once it has been seen with nothing pending and
        nothing unacknowledged, that is over for the life of the process. A message delivered to a
        process that died (or was stopped while fetching it) stays unacknowledged until ack_wait
        passes and it is redelivered: after a restart the timers may wait that long."""
        if not self._caught_up:
            rt = self._rt
            try:
                info = await rt.js.consumer_info(rt.settings.stream, rt.durable("requests"))
            except NotFoundError:
                return False  # not created yet: the consumer starts after the timers
            self._caught_up = info.num_pending == 0 and info.num_ack_pending == 0
            if info.num_pending == 0 and info.num_ack_pending and not self._told:
                # In flight here, or delivered to a process that stopped before acknowledging them
                # (those come back after ack_wait): the timers wait for them either way.
                log.info(
                    "timers wait until every message delivered is acknowledged (one fetched by a "
                    "stopped process comes back after ack_wait)",
                    extra={"unacknowledged": info.num_ack_pending, "ack_wait_s": rt.settings.ack_wait_s},
                )
                self._told = True
        return self._caught_up
