"""Run the validation service: `python -m services.validation` (on uvloop: the OCSP responder's HTTP
is its hot path, and uvloop's transports cost less per response than asyncio's)."""

import asyncio

import uvloop

from services.validation.app import build
from shared.runtime.service import run

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    run(build()[0])
