"""Run the enrollment service: `python -m services.enrollment`."""

from services.enrollment.app import build
from shared.runtime.service import run

if __name__ == "__main__":
    run(build()[0])
