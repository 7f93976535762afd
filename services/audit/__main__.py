"""Run the audit service: `python -m services.audit`."""

from services.audit.app import build
from shared.runtime.service import run

if __name__ == "__main__":
    run(build()[0])
