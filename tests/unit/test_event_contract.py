"""Event schemas only grow: every field in the snapshot keeps its name, type and meaning.

Regenerate the snapshot only when ADDING events or optional fields:
    .venv/bin/python -m tests.unit.test_event_contract   (writes tests/contract/event_schemas.json)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.events import event_json_schemas

SNAPSHOT = Path(__file__).resolve().parents[1] / "contract" / "event_schemas.json"


def _snapshot() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SNAPSHOT.read_text())
    return data


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = schema.get("properties", {})
    return {
        k: {key: v.get(key) for key in ("type", "anyOf", "$ref", "items", "format", "pattern", "const", "enum")}
        for k, v in props.items()
    }


@pytest.mark.parametrize("name", sorted(_snapshot()))
def test_no_event_type_disappears(name: str) -> None:
    assert name in event_json_schemas()


@pytest.mark.parametrize("name", sorted(_snapshot()))
def test_no_field_is_removed_renamed_or_retyped(name: str) -> None:
    old, new = _properties(_snapshot()[name]), _properties(event_json_schemas()[name])
    for field, shape in old.items():
        assert field in new, f"{name}.{field} was removed or renamed"
        assert new[field] == shape, f"{name}.{field} changed type: {shape} -> {new[field]}"


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
