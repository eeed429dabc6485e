"""Every ``examples`` entry of every $defs type of the bundle:

- validates against the bundled schema (JSON Schema Draft 2020-12, formats checked);
- structures into its model (aliases into their Python type, union members through the
  union alias) and unstructures back to an equivalent dict: the same values, with null
  optional fields left out and defaults filled in.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from deepexec_protocol import _validators as _v
from deepexec_protocol import models
from deepexec_protocol.converter import structure, unstructure
from protocol_fixtures import BUNDLE, DEFS, MODEL_CLASSES, ref_name

EXAMPLES = [
    pytest.param(name, i, example, id=f"{name}[{i}]")
    for name, schema in DEFS.items()
    for i, example in enumerate(schema.get("examples", []))
]
UNIONS = {name: d for name, d in DEFS.items() if "oneOf" in d}


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {**schema, "$defs": DEFS}, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_the_bundle_is_a_valid_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(BUNDLE)
    assert BUNDLE["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_type_has_title_description_and_examples_where_it_can() -> None:
    for name, schema in DEFS.items():
        assert schema.get("title") == name
        assert schema.get("description"), name
        if "enum" not in schema and "oneOf" not in schema:
            assert schema.get("examples"), f"{name} has no examples"
    assert len(EXAMPLES) >= 60


@pytest.mark.parametrize(("name", "index", "example"), EXAMPLES)
def test_example_is_valid(name: str, index: int, example: Any) -> None:
    _validator({"$ref": f"#/$defs/{name}"}).validate(example)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DEFS[ref_name(schema["$ref"])]
    return schema


def _branch(schema: dict[str, Any], value: Any) -> dict[str, Any]:
    """The schema that describes ``value`` (through $ref, anyOf and oneOf)."""
    schema = _resolve(schema)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            fits = [s for s in schema[key] if _validator(s).is_valid(value)]
            assert len(fits) == 1 or key == "anyOf", (schema, value)
            return _branch(fits[0], value)
    return schema


def assert_equivalent(original: Any, written: Any, schema: dict[str, Any]) -> None:
    """``written`` says what ``original`` says: same values; an optional null may be left
    out; a field left out in ``original`` may be written with its schema default."""
    schema = _branch(schema, original)
    if isinstance(original, dict) and "properties" in schema:
        assert isinstance(written, dict)
        props = schema["properties"]
        for key, value in original.items():
            if value is None and key not in schema.get("required", []):
                assert written.get(key) is None, key
            else:
                assert key in written, key
                assert_equivalent(value, written[key], props.get(key, {}))
        for key in set(written) - set(original):
            assert "default" in props[key], f"{key} written but neither given nor defaulted"
            assert written[key] == props[key]["default"], key
    elif isinstance(original, list):
        assert isinstance(written, list) and len(written) == len(original)
        for a, b in zip(original, written, strict=True):
            assert_equivalent(a, b, schema.get("items", {}))
    else:
        assert written == original
        assert type(written) is type(original) or {type(written), type(original)} == {int, float}


@pytest.mark.parametrize(
    ("name", "index", "example"), [p for p in EXAMPLES if p.values[0] in MODEL_CLASSES]
)
def test_model_example_structures_and_unstructures(name: str, index: int, example: Any) -> None:
    cls = MODEL_CLASSES[name]
    obj = structure(example, cls)
    assert type(obj) is cls
    written = unstructure(obj)
    assert_equivalent(example, written, DEFS[name])
    _validator({"$ref": f"#/$defs/{name}"}).validate(written)
    assert structure(written, cls) == obj


ALIASES = [p for p in EXAMPLES if p.values[0] not in MODEL_CLASSES]


@pytest.mark.parametrize(("name", "index", "example"), ALIASES)
def test_alias_example_structures_as_its_python_type(name: str, index: int, example: Any) -> None:
    alias = getattr(models, name)
    assert structure(example, alias) == example
    schema = DEFS[name]
    if "pattern" in schema:
        # the validator every field of this type carries
        assert _v.compile_pattern(schema["pattern"])(example) is not None
    if schema.get("format") == "date-time":
        _v.date_time(None, type("A", (), {"name": name}), example)


def test_there_are_alias_examples() -> None:
    assert {p.values[0] for p in ALIASES} >= {
        "JobId",
        "SessionId",
        "LanguageId",
        "Tag",
        "Timestamp",
    }


@pytest.mark.parametrize("union", sorted(UNIONS))
def test_union_member_examples_structure_through_the_union(union: str) -> None:
    alias = getattr(models, union)
    members = [ref_name(s["$ref"]) for s in UNIONS[union]["oneOf"]]
    seen = 0
    for member in members:
        for example in DEFS[member]["examples"]:
            _validator({"$ref": f"#/$defs/{union}"}).validate(example)
            obj = structure(example, alias)
            assert type(obj) is MODEL_CLASSES[member]
            assert_equivalent(example, unstructure(obj), DEFS[union])
            seen += 1
    assert seen >= len(members)
