"""Event schemas only grow: every field in the snapshot keeps its name, type and meaning.

Regenerate the snapshot only when ADDING events or optional fields:
    .venv/bin/python -m tests.unit.test_event_contract   (writes tests/contract/event_schemas.json)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.contract.events import event_json_schemas

SNAPSHOT = Path(__file__).resolve().parents[1] / "contract" / "event_schemas.json"


def _snapshot() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SNAPSHOT.read_text())
    return data


# Bounds (lengths, counts, ranges, patterns) may be set and tuned: what a field holds stays the same.
BOUNDS = {"maxLength", "minLength", "maxItems", "minItems", "maximum", "minimum", "exclusiveMaximum", "pattern"}


def _shape(value: Any) -> Any:
    """A schema fragment without its bounds and its documentation."""
    if isinstance(value, dict):
        return {
            k: _shape(v) for k, v in value.items() if k not in BOUNDS and k not in ("title", "description", "default")
        }
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = schema.get("properties", {})
    return {
        k: {key: _shape(v.get(key)) for key in ("type", "anyOf", "$ref", "items", "format", "const", "enum")}
        for k, v in props.items()
    }


@pytest.mark.parametrize("name", sorted(_snapshot()))
def test_no_event_type_disappears(name: str) -> None:
    assert name in event_json_schemas()


def _grows(old: Any, new: Any) -> bool:
    """Whether `new` is `old`, or `old` with more values in its enumerations (a field that names what
    authorised something may name a new authority; every value it held keeps its meaning)."""
    if isinstance(old, dict) and isinstance(new, dict):
        if old.keys() != new.keys():
            return False
        return all(
            set(old[k]) <= set(new[k]) if k == "enum" and old[k] and new[k] else _grows(old[k], new[k]) for k in old
        )
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_grows(o, n) for o, n in zip(old, new, strict=True))
    return bool(old == new)


@pytest.mark.parametrize("name", sorted(_snapshot()))
def test_no_field_is_removed_renamed_or_retyped(name: str) -> None:
    old, new = _properties(_snapshot()[name]), _properties(event_json_schemas()[name])
    for field, shape in old.items():
        assert field in new, f"{name}.{field} was removed or renamed"
        assert _grows(shape, new[field]), f"{name}.{field} changed type: {shape} -> {new[field]}"


def test_an_enumeration_may_gain_values_but_not_lose_or_change_them() -> None:
    old = {"anyOf": [{"enum": ["holder", "operator"], "type": "string"}, {"type": "null"}]}
    assert _grows(old, {"anyOf": [{"enum": ["holder", "requester", "operator"], "type": "string"}, {"type": "null"}]})
    assert not _grows(old, {"anyOf": [{"enum": ["holder"], "type": "string"}, {"type": "null"}]})
    assert not _grows(old, {"anyOf": [{"enum": ["holder", "operator"], "type": "integer"}, {"type": "null"}]})
    assert not _grows(old, {"anyOf": [{"enum": ["holder", "operator"], "type": "string"}]})


@pytest.mark.parametrize("name", sorted(_snapshot()))
def test_new_fields_are_optional(name: str) -> None:
    old = set(_snapshot()[name].get("properties", {}))
    required = set(event_json_schemas()[name].get("required", []))
    assert not (required - old), f"{name} gained required fields {required - old}"


def test_every_event_has_the_envelope() -> None:
    envelope = {
        "event_id",
        "event_type",
        "aggregate_id",
        "occurred_at",
        "correlation_id",
        "causation_id",
        "producer",
        "schema_version",
    }
    for name, schema in event_json_schemas().items():
        assert envelope <= set(schema["properties"]), name


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(event_json_schemas(), indent=2, sort_keys=True) + "\n")
