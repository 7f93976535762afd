"""Generate docs/asyncapi.json, the AsyncAPI description of every Certbus event and query, from the code.

.venv/bin/python -m docs.asyncapi          (also `make docs`; a unit test checks it is current)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI

from services.audit.app import build as audit
from services.enrollment.app import build as enrollment
from services.revocation.app import build as revocation
from services.signing.app import build as signing
from services.validation.app import build as validation
from shared.base.settings import (
    AuditSettings,
    EnrollmentSettings,
    RevocationSettings,
    SigningSettings,
    ValidationSettings,
)
from shared.runtime.service import VERSION

OUTPUT = Path(__file__).with_name("asyncapi.json")


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the five services, as a dict."""
    with tempfile.TemporaryDirectory() as keys:
        runtimes = [
            enrollment(EnrollmentSettings())[1],
            signing(SigningSettings(key_dir=Path(keys), ca_passphrase="documentation-only-passphrase"))[1],
            validation(ValidationSettings())[1],
            revocation(RevocationSettings())[1],
            audit(AuditSettings())[1],
        ]
    for rt in runtimes:
        rt.assemble(documenting=True)
    spec = AsyncAPI(
        *(rt.broker for rt in runtimes),
        title="Certbus",
        version=VERSION,
        description="Lifecycle events on the CERTBUS JetStream stream (pki.>) and request-reply queries (certbus.q.>).",
    )
    data: dict[str, Any] = json.loads(spec.to_specification().to_json())
    return data


def render() -> str:
    """The document as it is committed: sorted keys, two-space indent."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
