"""Health is ready only when the system can do its job, and names what is missing until then:
a profile applied, an issuing CA, validation's OCSP responder certificate for each issuing CA."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from harness import Harness, eventually


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def get(h: Harness, service: str, path: str) -> tuple[int, dict[str, Any]]:
    """An HTTP GET from a thread (the services run in this event loop)."""
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{h.http_ports[service]}{path}")


async def readiness(h: Harness) -> dict[str, dict[str, Any]]:
    async with h.client() as c:
        return {r["service"]: r for r in await c.readiness()}


async def test_health_names_each_thing_missing_until_profiles_and_responders_are_there(harness: Harness) -> None:
    h = harness
    await h.start()
    async with h.client() as c:
        issuing = (await c.health("signing"))["issuing_ca"]

    # Nothing applied: enrollment lacks a profile, validation a responder for signing's issuing CA.
    async def heard_of_the_ca() -> dict[str, dict[str, Any]] | None:
        reports = await readiness(h)
        return reports if any(issuing in m for m in reports["validation"]["missing"]) else None

    reports = await eventually(heard_of_the_ca, timeout=20)
    assert [m for m in reports["enrollment"]["missing"] if "no profile is applied" in m]
    assert reports["signing"]["ready"] and reports["revocation"]["ready"] and reports["audit"]["ready"]
    assert not reports["validation"]["ready"] and reports["validation"]["status"] == "ok"
    status, body = await get(h, "enrollment", "/readyz")
    assert status == 503 and body["ready"] is False and body["missing"] == reports["enrollment"]["missing"]
    assert (await get(h, "enrollment", "/healthz"))[0] == 200  # alive all the same
    health = await h.cli("health")
    assert health.returncode == 1
    assert "not ready: enrollment: no profile is applied" in health.stderr
    assert f"not ready: validation: no current OCSP responder certificate for issuing CA {issuing}" in health.stderr
    as_json = await h.cli("health", "--json")
    assert as_json.returncode == 1
    assert {r["service"]: r["ready"] for r in json.loads(as_json.stdout)}["enrollment"] is False

    # Profiles applied, but validation's provisioner not registered: only validation is missing, and why.
    await h.register_provisioner()
    await h.apply_profiles()

    async def only_validation_missing() -> dict[str, dict[str, Any]] | None:
        reports = await readiness(h)
        not_ready = {name for name, r in reports.items() if not r["ready"]}
        return reports if not_ready == {"validation"} and "not registered" in str(reports["validation"]) else None

    reports = await eventually(only_validation_missing, timeout=20)
    [missing] = reports["validation"]["missing"]
    assert issuing in missing and "provisioner 'ocsp-validation' is not registered" in missing
    assert (await get(h, "validation", "/readyz"))[0] == 503

    # Once validation has its responder certificate, everything is ready.
    await h.register_ocsp_provisioner()

    async def all_ready() -> bool:
        return all(r["ready"] for r in (await readiness(h)).values())

    await eventually(all_ready, timeout=30, interval=0.2)
    status, body = await get(h, "validation", "/readyz")
    assert status == 200 and body["missing"] == [] and issuing in body["ocsp_responders"]
    health = await h.cli("health")
    assert health.returncode == 0, health.stdout + health.stderr


async def test_without_signing_there_is_no_issuing_ca_and_health_says_so(harness: Harness) -> None:
    h = harness
    await h.start("enrollment", "validation", "revocation", "audit")
    reports = await readiness(h)
    assert reports["signing"]["missing"] == ["it does not answer"]
    assert reports["validation"]["missing"] == [
        "no live issuing CA known yet (signing announces one when it creates it)"
    ]
    health = await h.cli("health")
    assert health.returncode == 1
    assert "not ready: signing: it does not answer" in health.stderr
    assert "not ready: validation: no live issuing CA known yet" in health.stderr
