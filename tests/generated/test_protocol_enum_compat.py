"""Enum values of a later MINOR version: a response-only enum keeps a value it does not know,
every other enum still rejects one.

A response-only enum is one no request or query contains (the generator computes the set,
see PROTOCOL.md, Versioning): a server of a later MINOR version may add values to it, so the
model keeps an unknown string as an instance of the enum that is not one of its members, and
it unstructures back unchanged. Enums a request contains stay closed: the server validates
requests with these same models.
"""

from __future__ import annotations

import copy
import json
import pickle
import sys
from enum import StrEnum
from typing import Any

import pytest
from deepexec_protocol import _http, errors, models
from deepexec_protocol import converter as conv
from deepexec_protocol.converter import StructureError, structure, unstructure
from protocol_fixtures import DEFS, ROOT, success_example

if str(ROOT) not in sys.path:  # codegen/ is a top-level directory, not an installed package
    sys.path.insert(0, str(ROOT))

from codegen.bundle import bundle  # noqa: E402
from codegen.generate import SCHEMA_DIR  # noqa: E402
from codegen.ir import build_ir  # noqa: E402

#: what the generator should find; a schema change that moves an enum to or from a request
#: must show up here (and in PROTOCOL.md's Versioning section)
RESPONSE_ONLY = {"ErrorCode", "HealthState", "OutputStream", "ResponseStatus"}
REQUEST_SIDE = {"JobState", "JobType"}

ENUMS: dict[str, type[StrEnum]] = {
    name: getattr(models, name)
    for name in models.__all__
    if isinstance(getattr(models, name), type) and issubclass(getattr(models, name), StrEnum)
}

NEW = "added_in_a_later_minor"


def test_the_generator_finds_exactly_the_response_only_enums() -> None:
    ir = build_ir(bundle(SCHEMA_DIR))
    assert set(ir.response_only_enums) == RESPONSE_ONLY
    assert {e.name for e in ir.enums} == RESPONSE_ONLY | REQUEST_SIDE == set(ENUMS)


def test_the_generated_enums_are_open_exactly_when_response_only() -> None:
    def keeps_unknown(cls: type[StrEnum]) -> bool:
        try:
            cls(NEW)
        except ValueError:
            return False
        return True

    assert {name for name, cls in ENUMS.items() if keeps_unknown(cls)} == RESPONSE_ONLY


def test_protocol_md_names_the_response_only_enums() -> None:
    text = (ROOT / "PROTOCOL.md").read_text(encoding="utf-8")
    versioning = text.split("## Versioning", 1)[1].split("\n## ", 1)[0]
    for name in RESPONSE_ONLY | REQUEST_SIDE:
        assert f"`{name}`" in versioning


@pytest.mark.parametrize("name", sorted(RESPONSE_ONLY))
def test_unknown_value_of_a_response_only_enum_is_kept(name: str) -> None:
    cls = ENUMS[name]
    known = list(cls)
    value = cls(NEW)
    assert isinstance(value, cls) and isinstance(value, str)
    assert value == NEW and str(value) == NEW and f"{value}" == NEW
    assert value.value == NEW and value.value.__class__ is str
    assert hash(value) == hash(NEW)
    assert cls(NEW) == value
    assert pickle.loads(pickle.dumps(value)) == value
    assert copy.deepcopy(value) == value
    # not a member: the class's members are exactly the known ones, each still a singleton
    assert value not in known and value not in cls
    assert list(cls) == known and len(cls) == len(known)
    assert NEW not in cls.__members__ and NEW not in cls._value2member_map_
    for member in known:
        assert cls(member.value) is member
        assert cls[member.name] is member
        assert structure_field(name, member.value) is member


@pytest.mark.parametrize("name", sorted(RESPONSE_ONLY))
def test_a_str_subclass_value_is_kept_as_a_plain_string(name: str) -> None:
    class Text(str):
        pass

    value = ENUMS[name](Text(NEW))
    assert value == NEW and value.value.__class__ is str


ERROR_ENVELOPE = next(
    e for e in DEFS["CodeExecutionResponse"]["examples"] if e["status"] == "error"
)

# (enum, model, message, dotted path of a field of that enum): every response-only enum in
# at least one message, also read through a tagged union where one carries the model
PLACES: list[tuple[str, Any, dict[str, Any], str]] = [
    ("HealthState", models.HealthResponse, success_example("HealthResponse"), "output.status"),
    ("ResponseStatus", models.HealthResponse, success_example("HealthResponse"), "status"),
    ("OutputStream", models.JobOutputEvent, DEFS["JobOutputEvent"]["examples"][0], "stream"),
    ("OutputStream", models.JobEvent, DEFS["JobOutputEvent"]["examples"][0], "stream"),
    ("ErrorCode", models.CodeExecutionResponse, ERROR_ENVELOPE, "error.code"),
    ("ErrorCode", models.StreamError, DEFS["StreamError"]["examples"][0], "error.code"),
    (
        "ErrorCode",
        models.TextGenerationStreamEvent,
        DEFS["StreamError"]["examples"][0],
        "error.code",
    ),
]
PLACE_IDS = [
    f"{name}-{'union' if not isinstance(model, type) else model.__name__}-{path}"
    for name, model, _, path in PLACES
]


def test_unknown_values_are_remembered_within_a_bound() -> None:
    cls = models.HealthState
    values = [cls(f"state_{i}") for i in range(3 * models._UNKNOWN_VALUES_MAX)]
    assert len(models._UNKNOWN_VALUES) <= models._UNKNOWN_VALUES_MAX
    assert [v.value for v in values] == [f"state_{i}" for i in range(len(values))]
    assert list(cls) == [cls.OK, cls.DEGRADED]


def with_value(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for step in parents:
        node = node[step]
    node[last] = value
    return data


def value_at(obj: Any, path: str) -> Any:
    for step in path.split("."):
        obj = getattr(obj, step)
    return obj


def structure_field(name: str, value: Any) -> Any:
    """``value`` read as the first field of enum ``name`` in PLACES."""
    _, model, data, path = next(p for p in PLACES if p[0] == name)
    return value_at(structure(with_value(data, path, value), model), path)


@pytest.mark.parametrize(
    ("name", "model", "data", "path"),
    PLACES,
    ids=PLACE_IDS,
)
def test_unknown_value_in_a_message_is_kept_and_round_trips(
    name: str, model: Any, data: dict[str, Any], path: str
) -> None:
    data = with_value(data, path, NEW)
    obj = structure(data, model)
    value = value_at(obj, path)
    assert isinstance(value, ENUMS[name]) and value == NEW and value.value == NEW
    assert value not in list(ENUMS[name])
    raw = unstructure(obj)
    written = raw
    for step in path.split("."):
        written = written[step]
    assert written == NEW and written.__class__ is str
    assert raw == {k: v for k, v in data.items() if v is not None}  # None fields left out
    assert structure(raw, model) == obj
    # the detailed converter (the one that names paths) takes the same data
    assert conv._diagnostic.structure(data, model) == obj


def test_health_with_a_later_state_is_read() -> None:
    """The case of PROTOCOL.md: a server of a later MINOR version reports a new state."""
    data = with_value(success_example("HealthResponse"), "output.status", "maintenance")
    data["protocol_version"] = "2024.2"
    health = structure(data, models.HealthResponse)
    assert health.output is not None
    assert health.output.status == "maintenance"
    assert health.output.status.value == "maintenance"
    assert isinstance(health.output.status, models.HealthState)
    assert health.output.status not in (models.HealthState.OK, models.HealthState.DEGRADED)


@pytest.mark.parametrize(
    ("name", "model", "data", "path"),
    PLACES,
    ids=PLACE_IDS,
)
@pytest.mark.parametrize(
    ("value", "got"),
    [
        (5, "int"),
        (1.5, "float"),
        (True, "bool"),
        (None, "NoneType"),
        (["ok"], "list"),
        ({"ok": 1}, "dict"),
    ],
    ids=["int", "float", "bool", "null", "list", "object"],
)
def test_non_string_value_of_a_response_only_enum_is_rejected(
    name: str, model: Any, data: dict[str, Any], path: str, value: Any, got: str
) -> None:
    with pytest.raises(StructureError) as raised:
        structure(with_value(data, path, value), model)
    assert raised.value.path == path
    assert raised.value.reason == f"expected a string, got {got}"
    with pytest.raises(ValueError, match="is not a valid"):
        ENUMS[name](value)


REQUEST_ENUM_PLACES = [
    # (enum, model, message, dotted path of a field of that enum)
    ("JobState", models.ListJobsQuery, DEFS["ListJobsQuery"]["examples"][0], "status"),
    ("JobType", models.SubmitJobRequest, DEFS["SubmitJobRequest"]["examples"][0], "input.job_type"),
    # closed in responses too: responses carry the same enum
    ("JobState", models.JobStatus, DEFS["JobStatus"]["examples"][0], "status"),
    ("JobState", models.JobStatusEvent, DEFS["JobStatusEvent"]["examples"][0], "status"),
]


@pytest.mark.parametrize(
    ("name", "model", "data", "path"),
    REQUEST_ENUM_PLACES,
    ids=[f"{p[0]}-{p[1].__name__}-{p[3]}" for p in REQUEST_ENUM_PLACES],
)
def test_unknown_value_of_an_enum_requests_use_is_rejected(
    name: str, model: Any, data: dict[str, Any], path: str
) -> None:
    cls = ENUMS[name]
    allowed = ", ".join(member.value for member in cls)
    with pytest.raises(StructureError) as raised:
        structure(with_value(data, path, NEW), model)
    assert raised.value.path == path
    assert raised.value.reason == f"{NEW!r} is not one of {allowed}"
    with pytest.raises(ValueError, match="is not a valid"):
        cls(NEW)
    with pytest.raises(StructureError) as raised:
        structure(with_value(data, path, 5), model)
    assert raised.value.reason == "expected a string, got int"


# --- what the transport makes of them ------------------------------------------------------

JSON = "application/json"


def test_an_error_code_of_a_later_version_raises_mcp_error_with_its_code() -> None:
    data = with_value(ERROR_ENVELOPE, "error.code", NEW)
    body = json.dumps(data).encode()
    with pytest.raises(errors.MCPError) as raised:
        _http.decode_envelope(body, 418, {}, JSON, models.CodeExecutionResponse)
    assert type(raised.value) is errors.MCPError
    assert raised.value.code == NEW
    assert raised.value.http_status == 418
    assert raised.value.message == ERROR_ENVELOPE["error"]["message"]


def test_health_state_of_a_later_version_is_returned() -> None:
    data = with_value(success_example("HealthResponse"), "output.status", "maintenance")
    body = json.dumps(data).encode()
    envelope = _http.decode_envelope(body, 200, {}, JSON, models.HealthResponse)
    assert envelope.output is not None and envelope.output.status == "maintenance"


def test_an_envelope_with_an_unknown_status_is_a_protocol_error() -> None:
    """ResponseStatus keeps the value, but only success and error say how to read an
    envelope."""
    data = with_value(success_example("HealthResponse"), "status", "partial")
    body = json.dumps(data).encode()
    with pytest.raises(errors.MCPProtocolError) as raised:
        _http.decode_envelope(body, 200, {}, JSON, models.HealthResponse)
    assert type(raised.value) is errors.MCPProtocolError
    assert "unknown response status 'partial'" in str(raised.value)
    assert raised.value.details == {"path": "status"}
