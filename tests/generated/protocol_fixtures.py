"""Shared data of the tests of the generated layer: the bundled schema, its examples, and
hypothesis strategies derived from the schema (so generated data respects every constraint).
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
from deepexec_protocol import constants, models
from deepexec_protocol.converter import structure
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_PATH = ROOT / "generated" / "schema" / "deepexec.bundle.schema.json"
OPENAPI_PATH = ROOT / "generated" / "schema" / "openapi.json"
BUNDLE: dict[str, Any] = json.loads(BUNDLE_PATH.read_text(encoding="utf-8"))
DEFS: dict[str, Any] = BUNDLE["$defs"]
VERSION = constants.PROTOCOL_VERSION

JOB_ID = "job_0123456789abcdef0123456789abcdef"
SESSION_ID = "sess_0123456789abcdef0123456789abcdef"

MODEL_CLASSES: dict[str, type[Any]] = {
    name: getattr(models, name) for name in models.__all__ if attrs.has(getattr(models, name))
}


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def success_example(response: str) -> dict[str, Any]:
    """The first example of a response envelope whose status is success."""
    return next(e for e in DEFS[response]["examples"] if e["status"] == "success")


#: the base URL the generated-layer tests call
BASE = "http://deepexec.test"


def call_args(name: str) -> tuple[dict[str, Any], str]:
    """How to call operation ``name`` in these tests: its keyword arguments (path
    parameters and a valid request body) and the URL the call goes to."""
    op = constants.OPERATIONS[name]
    kwargs: dict[str, Any] = {}
    path = op.path
    for param in op.path_params:
        value = {"job_id": JOB_ID, "session_id": SESSION_ID}[param]
        kwargs[param] = value
        path = path.replace("{" + param + "}", value)
    if op.request:
        kwargs["body"] = request_body(op.request)
    return kwargs, BASE + path


def request_body(request: str) -> Any:
    """The first example of a request envelope, as its model."""
    return structure(DEFS[request]["examples"][0], MODEL_CLASSES[request])


# --- strategies derived from the schema ----------------------------------------------------

_TIMESTAMPS = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
).flatmap(
    lambda dt: (
        st.sampled_from(
            [dt.isoformat(), dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"]
        )
        if dt.utcoffset() == timedelta(0)
        else st.just(dt.isoformat())
    )
)

_JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
JSON_VALUES = st.recursive(
    _JSON_SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)

_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = {
            **DEFS[ref_name(schema["$ref"])],
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    return schema


def _string(s: dict[str, Any]) -> st.SearchStrategy[str]:
    if s.get("format") == "date-time":
        return _TIMESTAMPS
    if "pattern" in s:
        strategy = st.from_regex(s["pattern"], fullmatch=True)
        if "maxLength" in s or "minLength" in s:
            lo, hi = s.get("minLength", 0), s.get("maxLength", 10**9)
            strategy = strategy.filter(lambda x: lo <= len(x) <= hi)
        return strategy
    lo = s.get("minLength", 0)
    return st.text(
        st.characters(codec="utf-8"), min_size=lo, max_size=min(s.get("maxLength", 12), lo + 12)
    )


def _number(s: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    lo = s.get("minimum", s.get("exclusiveMinimum"))
    hi = s.get("maximum", s.get("exclusiveMaximum"))
    if integer:
        lo = None if lo is None else lo + (1 if "exclusiveMinimum" in s else 0)
        hi = None if hi is None else hi - (1 if "exclusiveMaximum" in s else 0)
        return st.integers(
            min_value=lo if lo is not None else -(2**53), max_value=hi if hi is not None else 2**53
        )
    floats = st.floats(
        min_value=lo if lo is not None else -1e12,
        max_value=hi if hi is not None else 1e12,
        exclude_min="exclusiveMinimum" in s,
        exclude_max="exclusiveMaximum" in s,
        allow_nan=False,
        allow_infinity=False,
    )
    ints = st.integers(
        min_value=int(lo) + 1 if lo is not None else -(10**6),
        max_value=int(hi) if hi is not None else 10**6,
    )
    return floats | ints  # a JSON number may well be written without a fraction


def _object(s: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props: dict[str, Any] = s.get("properties", {})
    if not props:
        addl = s.get("additionalProperties", True)
        keys: st.SearchStrategy[str] = st.text(max_size=8)
        if "propertyNames" in s:
            keys = st.from_regex(s["propertyNames"]["pattern"], fullmatch=True)
        values = JSON_VALUES if addl is True else from_schema(addl)
        return st.dictionaries(keys, values, max_size=min(3, s.get("maxProperties", 3)))
    branches = [b for b in s.get("allOf", []) if "if" in b]
    if not branches:
        return _fields(props, set(s.get("required", [])))
    # if/then on a const discriminator (status -> output/error, job_type -> data)
    (key,) = {k for b in branches for k in b["if"]["properties"]}
    options = []
    for b in branches:
        then = b["then"]
        value = b["if"]["properties"][key]["const"]
        merged = {**props, **then.get("properties", {}), key: {"const": value}}
        options.append(_fields(merged, set(s.get("required", [])) | set(then.get("required", []))))
    return st.one_of(options)


def _fields(props: dict[str, Any], required: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    optional = {k: from_schema(v) for k, v in props.items() if k not in required}
    return st.fixed_dictionaries(
        {k: from_schema(v) for k, v in props.items() if k in required}, optional=optional
    )


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy of JSON values valid against ``schema`` (the constructs the bundle uses)."""
    s = _resolve(schema)
    if "const" in s:
        return st.just(s["const"])
    if "enum" in s:
        return st.sampled_from(s["enum"])
    if "oneOf" in s:
        return st.one_of([from_schema(sub) for sub in s["oneOf"]])
    if "anyOf" in s:
        rest = {k: v for k, v in s.items() if k != "anyOf"}
        return st.one_of([from_schema({**rest, **sub}) for sub in s["anyOf"]])
    kind = s.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**s, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "string":
        return _string(s)
    if kind == "integer":
        return _number(s, integer=True)
    if kind == "number":
        return _number(s, integer=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        items = from_schema(s.get("items", {}))
        size = min(s.get("maxItems", 4), 4)
        if s.get("uniqueItems"):
            return st.lists(items, max_size=size, unique=True)
        return st.lists(items, min_size=s.get("minItems", 0), max_size=size)
    if kind == "object":
        return _object(s)
    raise NotImplementedError(f"no strategy for schema {s!r}")


def model_data(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """JSON-shaped data of the $defs type ``name``."""
    return from_schema(DEFS[name])


PRINTABLE = st.text(string.ascii_letters + string.digits, min_size=1, max_size=8)
