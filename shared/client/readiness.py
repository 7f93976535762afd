"""The verdict `certbus health` gives: each service's health answer, and each of its replicas',
judged without servers."""

from __future__ import annotations

import json
from typing import Any


def judge_readiness(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The services' health answers with `ready`, `missing` and `warnings` settled, and each replica
    under `replicas` judged the same way (an answer that lists none is its own only replica).

    A replica is not ready if it is silent (not seen lately), did not answer, is not ok, or says
    what it lacks (one too old to report readiness is judged by its status alone); a validation
    replica is not ready unless it serves the issuing CA signing issues from (it may not have heard
    of a new one yet). A service is ready if any replica that is not silent is: what its other
    replicas lack is then a warning, not a failure. A silent replica is only ever a warning.
    """
    judged = [{**report, "replicas": [_judge_replica(r) for r in _replicas(report)]} for report in reports]
    by_name = {service["service"]: service for service in judged}
    issuing = {
        r["issuing_ca"]
        for r in by_name.get("signing", {}).get("replicas", [])
        if r.get("issuing_ca") and not r["silent"]
    }
    for replica in by_name.get("validation", {}).get("replicas", []):
        _check_responders(replica, sorted(issuing))
    for service in judged:
        _settle(service)
    return judged


def _replicas(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The replicas a service's answer lists; the answer itself if it lists none (a service that
    did not answer, or one too old to list its replicas)."""
    listed = report.get("replicas")
    if isinstance(listed, list) and listed:
        return [r for r in listed if isinstance(r, dict)]
    return [{key: value for key, value in report.items() if key != "replicas"}]


def _judge_replica(report: dict[str, Any]) -> dict[str, Any]:
    """One replica's report with `silent`, `missing` and `ready` settled."""
    silent = bool(report.get("silent"))
    missing = [] if silent else list(report.get("missing", []))
    if silent:
        missing.append(f"it is silent: not seen for {report.get('seen_s', '?')} s")
    elif report.get("status") == "down":
        missing.append("it does not answer")
    elif report.get("status") != "ok" and not missing:
        missing.append(f"its status is {report.get('status')}")
    ready = not missing and report.get("status") == "ok" and bool(report.get("ready", True))
    return {**report, "silent": silent, "missing": missing, "ready": ready}


def _check_responders(validation: dict[str, Any], issuing: list[str]) -> None:
    """Add to a live validation replica's `missing` each issuing CA of signing's it has no current
    OCSP responder certificate for (unless it already said so)."""
    served = validation.get("ocsp_responders")
    if validation["silent"] or validation.get("status") != "ok" or served is None:
        return
    for ca in issuing:
        if ca not in served and not any(ca in m for m in validation["missing"]):
            validation["missing"].append(
                f"no current OCSP responder certificate for signing's issuing CA {ca}: OCSP answers tryLater about it"
            )
            validation["ready"] = False


def _settle(service: dict[str, Any]) -> None:
    """A service's `ready`, `missing` and `warnings` from its judged replicas."""
    name, replicas = service["service"], service["replicas"]
    live = [r for r in replicas if not r["silent"]]
    service["ready"] = any(r["ready"] for r in live)
    if service["ready"]:
        service["missing"] = []
    else:
        service["missing"] = _lines(live, several=len(replicas) > 1) or ["none of its replicas has been seen lately"]
    warnings = [*service.get("warnings", []), *(w for r in live for w in r.get("warnings", []))]
    for replica in replicas:
        if replica["ready"] or not (service["ready"] or replica["silent"]):
            continue  # ready, or what it lacks is what the service lacks
        instance = replica.get("instance") or "?"
        if replica["silent"]:
            warnings.append(f"{name}: replica {instance} is silent: not seen for {replica.get('seen_s', '?')} s")
        else:
            warnings.extend(f"{name}: replica {instance} is not ready: {line}" for line in replica["missing"])
    left_off = service.get("replicas_left_off")
    if left_off:
        warnings.append(f"{name}: {left_off} more replica(s) not listed (only the most recently seen are)")
    service["warnings"] = list(dict.fromkeys(warnings))


def _lines(replicas: list[dict[str, Any]], *, several: bool) -> list[str]:
    """What `replicas` lack, one line per thing: as they say it if every one of them says it (or the
    service has one replica), else prefixed with the replica that says it."""
    lines: list[str] = []
    for replica in replicas:
        for line in replica["missing"]:
            shared = not several or all(line in r["missing"] for r in replicas)
            lines.append(line if shared else f"replica {replica.get('instance') or '?'}: {line}")
    return list(dict.fromkeys(lines))


def readyz_report(service: str, instance: str, status: int | None, body: bytes) -> dict[str, Any]:
    """A health answer, as `judge_readiness` takes them, from what a service's `/readyz` answered
    over HTTP (ACME's: it has no health query on the bus): its status code and body, `status` None
    if it did not answer. 200 is ready; 503 names what is `missing`; anything else is a failure."""
    if status is None:
        return {"service": service, "instance": instance, "status": "down"}
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if status not in (200, 503) or not isinstance(answer, dict):
        failed = f"its /readyz answered HTTP {status}, not a readiness report"
        return {"service": service, "instance": instance, "status": "failed", "missing": [failed]}
    listed = answer.get("missing")
    missing = [str(line) for line in listed] if isinstance(listed, list) else []
    ready = status == 200 and answer.get("ready") is True and not missing
    if not ready and not missing:
        missing = [f"its /readyz answered HTTP {status} and named nothing missing"]
    return {"service": service, "instance": instance, "status": "ok", "ready": ready, "missing": missing}
