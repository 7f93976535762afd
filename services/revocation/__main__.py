"""Run the revocation service: `python -m services.revocation`."""

from services.revocation.app import build
from shared.runtime.service import run

if __name__ == "__main__":
    run(build()[0])
