"""Run the validation service: `python -m services.validation`."""

from services.validation.app import build
from shared.runtime.service import run

if __name__ == "__main__":
    run(build()[0])
