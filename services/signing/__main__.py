"""Run the signing service: `python -m services.signing`."""

from services.signing.app import build
from shared.runtime.service import run

if __name__ == "__main__":
    run(build()[0])
