"""Run the ACME service: `python -m services.acme`."""

import asyncio

from services.acme.app import main

if __name__ == "__main__":
    asyncio.run(main())
