"""Round trips of every generated model, with data drawn from the bundled schema.

- structure(unstructure(x)) == x, also through orjson bytes, for every attrs model;
- the generated data is valid against the schema (so the strategies are honest);
- the specialised converter and the plain-cattrs diagnostic converter (models built through
  their attrs ``__init__`` and its validators) agree on every input, valid or broken.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import orjson
import pytest
from deepexec_protocol import converter as conv
from deepexec_protocol import models
from deepexec_protocol.converter import StructureError, structure, unstructure
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_fixtures import DEFS, JSON_VALUES, MODEL_CLASSES, model_data

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VALIDATORS = {
    name: jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": DEFS})
    for name in DEFS
}


def test_every_model_is_covered() -> None:
    """Every attrs class that models exports has a $defs type, and the reverse."""
    object_defs = {n for n, d in DEFS.items() if d.get("type") == "object" and "properties" in d}
    assert set(MODEL_CLASSES) == object_defs
    assert len(MODEL_CLASSES) >= 40


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*here, i))
    return out


def _break(data: st.DataObject, raw: Any) -> Any:
    """``raw`` with one place replaced, removed, or given an unknown key."""
    raw = copy.deepcopy(raw)
    path = data.draw(st.sampled_from(_paths(raw)), label="path")
    if not path:
        return data.draw(JSON_VALUES, label="whole")
    parent = raw
    for step in path[:-1]:
        parent = parent[step]
    how = data.draw(st.sampled_from(["replace", "delete", "extra"]), label="how")
    if how == "replace":
        value = data.draw(JSON_VALUES | st.text(max_size=3) | st.integers(-3, 3), label="value")
        parent[path[-1]] = value
    elif how == "delete" or not isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent["unknown_" + data.draw(st.text("abc", max_size=3))] = data.draw(JSON_VALUES)
    return raw


def _outcome(fn: Any, raw: Any) -> Any:
    try:
        return fn(copy.deepcopy(raw))
    except Exception:  # noqa: BLE001
        return "rejected"


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
@SETTINGS
@given(data=st.data())
def test_round_trip(name: str, data: st.DataObject) -> None:
    """structure(unstructure(x)) == x; and the fast path agrees with plain cattrs."""
    cls = MODEL_CLASSES[name]
    raw = data.draw(model_data(name), label=name)
    VALIDATORS[name].validate(raw)
    obj = structure(raw, cls)
    assert type(obj) is cls
    plain = unstructure(obj)
    assert structure(plain, cls) == obj
    # through the wire: bytes and back
    assert structure(orjson.loads(orjson.dumps(plain)), cls) == obj
    # what we write is valid against the schema too
    VALIDATORS[name].validate(plain)
    # the plain-cattrs path (attrs __init__ and its validators) builds the same model
    assert conv._diagnostic.structure(raw, cls) == obj

    # the specialised hooks accept exactly what cattrs + the attrs validators accept
    bad = _break(data, raw)
    fast = _outcome(conv._STRUCTURE[cls], bad)
    slow = _outcome(lambda d: conv._diagnostic.structure(d, cls), bad)
    assert fast == slow
    if slow == "rejected":
        with pytest.raises(StructureError) as info:
            structure(bad, cls)
        assert info.value.reason != "does not fit the model"


UNIONS = {
    "JobEvent": models.JobEvent,
    "JobResult": models.JobResult,
    "TextGenerationStreamEvent": models.TextGenerationStreamEvent,
}


@pytest.mark.parametrize("name", sorted(UNIONS))
@SETTINGS
@given(data=st.data())
def test_union_round_trip(name: str, data: st.DataObject) -> None:
    raw = data.draw(model_data(name), label=name)
    obj = structure(raw, UNIONS[name])
    assert obj.type == raw["type"]
    assert structure(unstructure(obj), UNIONS[name]) == obj
    bad = _break(data, raw)
    fast = _outcome(lambda d: conv.converter.structure(d, UNIONS[name]), bad)
    slow = _outcome(lambda d: conv._diagnostic.structure(d, UNIONS[name]), bad)
    assert fast == slow


def test_unstructure_leaves_out_none_and_keeps_defaults() -> None:
    obj = models.TextGenerationInput(prompt="hi")
    assert unstructure(obj) == {
        "prompt": "hi",
        "model": "deepseek-v3",
        "max_tokens": 1024,
        "temperature": 1.0,
    }
    assert unstructure(models.JobList(jobs=[])) == {"jobs": []}


def test_structured_values_do_not_alias_the_input() -> None:
    raw = {
        "name": "n",
        "job_type": "code_execution",
        "tags": ["a"],
        "data": {"code": "x", "language": "python", "environment": {"A": "1"}},
    }
    obj = structure(raw, models.SubmitJobInput)
    raw["tags"].append("b")
    raw["data"]["environment"]["B"] = "2"
    assert obj.tags == ["a"]
    assert isinstance(obj.data, models.CodeExecutionInput)
    assert obj.data.environment == {"A": "1"}
    out = unstructure(obj)
    out["tags"].append("c")
    assert obj.tags == ["a"]


def test_enums_come_back_as_members() -> None:
    obj = structure(DEFS["JobStatus"]["examples"][0], models.JobStatus)
    assert obj.status is models.JobState.COMPLETED
    assert obj.job_type is models.JobType.CODE_EXECUTION
    assert isinstance(obj.result, models.CodeExecutionResult)
    plain = unstructure(obj)
    assert type(plain["status"]) is str and plain["status"] == "COMPLETED"


def test_converter_object_has_the_same_hooks() -> None:
    """``converter`` (public) structures and unstructures like structure()/unstructure()."""
    example = DEFS["JobStatusResponse"]["examples"][0]
    obj = conv.converter.structure(example, models.JobStatusResponse)
    assert obj == structure(example, models.JobStatusResponse)
    assert conv.converter.unstructure(obj) == unstructure(obj)
    event = conv.converter.structure(DEFS["JobOutputEvent"]["examples"][0], models.JobEvent)
    assert isinstance(event, models.JobOutputEvent)
    assert conv.converter.structure(None, models.JobResult | None) is None
