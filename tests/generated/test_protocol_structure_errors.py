"""Invalid input raises StructureError naming the offending path, with a clear reason."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from deepexec_protocol import converter as conv
from deepexec_protocol import models
from deepexec_protocol.converter import StructureError, structure
from protocol_fixtures import DEFS, JOB_ID

CODE = DEFS["CodeExecutionRequest"]["examples"][0]
TEXT = DEFS["TextGenerationRequest"]["examples"][0]
SUBMIT = DEFS["SubmitJobRequest"]["examples"][0]
RESULT_RESPONSE = DEFS["CodeExecutionResponse"]["examples"][0]
JOBS_RESPONSE = DEFS["ListJobsResponse"]["examples"][0]


def changed(base: dict[str, Any], path: str, value: Any = ..., *, delete: bool = False) -> Any:
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = data
    for step in parents:
        node = node[int(step)] if isinstance(node, list) else node[step]
    if delete:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


CASES = [
    # (id, model, data, expected path, words the reason contains)
    (
        "code too long",
        models.CodeExecutionRequest,
        changed(CODE, "input.code", "x" * 100_001),
        "input.code",
        "at most 100000",
    ),
    (
        "code empty",
        models.CodeExecutionRequest,
        changed(CODE, "input.code", ""),
        "input.code",
        "at least 1",
    ),
    (
        "language upper case",
        models.CodeExecutionRequest,
        changed(CODE, "input.language", "Python"),
        "input.language",
        "does not match",
    ),
    (
        "language with a space",
        models.CodeExecutionRequest,
        changed(CODE, "input.language", "py thon"),
        "input.language",
        "does not match",
    ),
    (
        "language with a trailing newline",
        models.CodeExecutionRequest,
        changed(CODE, "input.language", "python\n"),
        "input.language",
        "does not match",
    ),
    (
        "language too long",
        models.CodeExecutionRequest,
        changed(CODE, "input.language", "p" * 33),
        "input.language",
        "does not match",
    ),
    (
        "temperature above",
        models.TextGenerationRequest,
        changed(TEXT, "input.temperature", 2.5),
        "input.temperature",
        "<= 2",
    ),
    (
        "temperature below",
        models.TextGenerationRequest,
        changed(TEXT, "input.temperature", -0.1),
        "input.temperature",
        ">= 0",
    ),
    (
        "top_p zero",
        models.TextGenerationRequest,
        changed(TEXT, "input.top_p", 0),
        "input.top_p",
        "> 0",
    ),
    (
        "extra field in input",
        models.CodeExecutionRequest,
        changed(CODE, "input.shell", True),
        "input",
        "unknown field(s) shell",
    ),
    (
        "extra field in envelope",
        models.CodeExecutionRequest,
        changed(CODE, "sneaky", 1),
        "",
        "unknown field(s) sneaky",
    ),
    (
        "code is a number",
        models.CodeExecutionRequest,
        changed(CODE, "input.code", 42),
        "input.code",
        "expected a string, got int",
    ),
    (
        "max_tokens is a string",
        models.TextGenerationRequest,
        changed(TEXT, "input.max_tokens", "500"),
        "input.max_tokens",
        "expected an integer, got str",
    ),
    (
        "max_tokens is a bool",
        models.TextGenerationRequest,
        changed(TEXT, "input.max_tokens", True),
        "input.max_tokens",
        "expected an integer, got bool",
    ),
    (
        "temperature is a bool",
        models.TextGenerationRequest,
        changed(TEXT, "input.temperature", False),
        "input.temperature",
        "expected a number, got bool",
    ),
    (
        "input is a list",
        models.CodeExecutionRequest,
        changed(CODE, "input", ["print(1)"]),
        "input",
        "expected an object, got list",
    ),
    (
        "code missing",
        models.CodeExecutionRequest,
        changed(CODE, "input.code", delete=True),
        "input.code",
        "required field missing",
    ),
    (
        "input missing",
        models.CodeExecutionRequest,
        changed(CODE, "input", delete=True),
        "input",
        "required field missing",
    ),
    (
        "protocol_version missing",
        models.CodeExecutionRequest,
        changed(CODE, "protocol_version", delete=True),
        "protocol_version",
        "required field missing",
    ),
    (
        "wrong message type",
        models.CodeExecutionRequest,
        changed(CODE, "type", "text_generation"),
        "type",
        "text_generation",
    ),
    (
        "bad tag in a list",
        models.SubmitJobRequest,
        changed(SUBMIT, "input.tags", ["ok", "not ok"]),
        "input.tags[1]",
        "does not match",
    ),
    (
        "tag not a string",
        models.SubmitJobRequest,
        changed(SUBMIT, "input.tags", ["ok", 7]),
        "input.tags[1]",
        "expected a string, got int",
    ),
    (
        "tags as a string",
        models.SubmitJobRequest,
        changed(SUBMIT, "input.tags", "nightly"),
        "input.tags",
        "expected an array, got str",
    ),
    (
        "tags as an object",
        models.SubmitJobRequest,
        changed(SUBMIT, "input.tags", {"nightly": 1}),
        "input.tags",
        "expected an array, got dict",
    ),
    (
        "duplicate tags",
        models.SubmitJobRequest,
        changed(SUBMIT, "input.tags", ["a", "a"]),
        "input.tags",
        "unique",
    ),
    (
        "job_type unknown",
        models.SubmitJobRequest,
        changed(SUBMIT, "input.job_type", "shell"),
        "input.job_type",
        "not one of",
    ),
    (
        "job_type not a string",
        models.SubmitJobRequest,
        changed(SUBMIT, "input.job_type", 1),
        "input.job_type",
        "expected a string, got int",
    ),
    (
        "unknown field in job data",
        models.SubmitJobRequest,
        changed(SUBMIT, "input.data.shell", "bash"),
        "input.data",
        "unknown field(s) shell",
    ),
    (
        "environment value not a string",
        models.CodeExecutionRequest,
        changed(CODE, "input.environment", {"A": 1}),
        "input.environment['A']",
        "expected a string",
    ),
    (
        "environment name invalid",
        models.CodeExecutionRequest,
        changed(CODE, "input.environment", {"1A": "x"}),
        "input.environment",
        "does not match",
    ),
    (
        "environment value with a NUL",
        models.CodeExecutionRequest,
        changed(CODE, "input.environment", {"TOKEN": "s3cr3t\x00tail"}),
        "input.environment['TOKEN']",
        "the value does not match",
    ),
    (
        "environment value with a NUL, in job data",
        models.SubmitJobRequest,
        changed(SUBMIT, "input.data.environment", {"TOKEN": "s3cr3t\x00tail"}),
        "input.data.environment['TOKEN']",
        "the value does not match",
    ),
    (
        "environment as a list",
        models.CodeExecutionRequest,
        changed(CODE, "input.environment", [["A", "b"]]),
        "input.environment",
        "expected an object",
    ),
    (
        "metadata value too long",
        models.CodeExecutionRequest,
        changed(CODE, "metadata", {"k": "v" * 1025}),
        "metadata['k']",
        "at most 1024",
    ),
    (
        "session id malformed",
        models.CodeExecutionRequest,
        changed(CODE, "session_id", "sess_x"),
        "session_id",
        "does not match",
    ),
    (
        "output breaks the model",
        models.CodeExecutionResponse,
        changed(RESULT_RESPONSE, "output.exit_code", "0"),
        "output.exit_code",
        "expected an integer",
    ),
    (
        "negative memory",
        models.CodeExecutionResponse,
        changed(RESULT_RESPONSE, "output.memory_usage", -1),
        "output.memory_usage",
        ">= 0",
    ),
    (
        "bad job in a page",
        models.ListJobsResponse,
        changed(
            JOBS_RESPONSE, "output.jobs", [{**DEFS["JobStatus"]["examples"][0], "progress": 101}]
        ),
        "output.jobs[0].progress",
        "<= 100",
    ),
    (
        "naive timestamp",
        models.ListJobsResponse,
        changed(
            JOBS_RESPONSE,
            "output.jobs",
            [{**DEFS["JobStatus"]["examples"][0], "created_at": "2026-11-26T13:40:00"}],
        ),
        "output.jobs[0].created_at",
        "RFC 3339",
    ),
    (
        "unknown result type",
        models.JobStatus,
        changed(DEFS["JobStatus"]["examples"][0], "result.type", "shell_result"),
        "result.type",
        "unknown type 'shell_result'",
    ),
]


@pytest.mark.parametrize(
    ("model", "data", "path", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_input_names_the_path(model: type[Any], data: Any, path: str, words: str) -> None:
    with pytest.raises(StructureError) as info:
        structure(data, model)
    err = info.value
    assert err.path == path
    assert words in err.reason
    assert str(err) == (f"{path}: {err.reason}" if path else err.reason)
    # the fast hooks reject it too (not only the diagnostic re-run)
    with pytest.raises(Exception):  # noqa: B017 - any exception: the fast path has no paths
        conv.converter.structure(data, model)


@pytest.mark.parametrize("data", ["text", 3, None, [1, 2], b"{}"])
def test_not_an_object(data: Any) -> None:
    with pytest.raises(StructureError) as info:
        structure(data, models.CodeExecutionRequest)
    assert info.value.path == ""
    assert "expected an object" in info.value.reason


def test_structure_error_is_a_value_error_and_keeps_input_unchanged() -> None:
    data = changed(CODE, "input.code", "")
    before = copy.deepcopy(data)
    with pytest.raises(ValueError):
        structure(data, models.CodeExecutionRequest)
    assert data == before


def test_unknown_fields_are_tolerated_in_responses() -> None:
    """Forward compatibility: a newer server may add fields to what it sends."""
    response = changed(RESULT_RESPONSE, "output.cpu_time", 1.5)
    response["server_region"] = "eu"
    obj = structure(response, models.CodeExecutionResponse)
    assert obj.output is not None and obj.output.exit_code == 0
    event = {**DEFS["JobOutputEvent"]["examples"][0], "sequence": 9}
    assert structure(event, models.JobEvent).job_id == JOB_ID


def test_valid_boundaries_pass() -> None:
    ok = changed(CODE, "input.code", "x" * 100_000)
    assert len(structure(ok, models.CodeExecutionRequest).input.code) == 100_000
    for temperature in (0, 2, 0.0, 2.0):
        obj = structure(
            changed(TEXT, "input.temperature", temperature), models.TextGenerationRequest
        )
        assert obj.input.temperature == float(temperature)
        assert type(obj.input.temperature) is float
    tags = [f"t{i}" for i in range(16)]
    assert (
        structure(changed(SUBMIT, "input.tags", tags), models.SubmitJobRequest).input.tags == tags
    )
    with pytest.raises(StructureError) as info:
        structure(changed(SUBMIT, "input.tags", [*tags, "t16"]), models.SubmitJobRequest)
    assert info.value.path == "input.tags" and "at most 16" in info.value.reason


def test_python_sequences_and_mappings_are_taken_for_arrays_and_objects() -> None:
    """Callers building data in Python may pass a tuple or a read-only mapping."""
    from types import MappingProxyType

    data = changed(SUBMIT, "input.tags", ("a", "b"))
    data["input"]["data"]["environment"] = MappingProxyType({"A": "1"})
    obj = structure(MappingProxyType(data), models.SubmitJobRequest)
    assert obj.input.tags == ["a", "b"] and type(obj.input.tags) is list
    assert isinstance(obj.input.data, models.CodeExecutionInput)
    assert obj.input.data.environment == {"A": "1"}
    assert type(obj.input.data.environment) is dict
    stop = changed(TEXT, "input.stop", ("\n\n", "END"))
    assert structure(stop, models.TextGenerationRequest).input.stop == ["\n\n", "END"]


@pytest.mark.parametrize("tags", [{"a", "b"}, "ab", b"ab", range(2), iter(["a"])])
def test_other_iterables_are_not_arrays(tags: Any) -> None:
    with pytest.raises(StructureError) as info:
        structure(changed(SUBMIT, "input.tags", tags), models.SubmitJobRequest)
    assert info.value.path == "input.tags"
    assert "expected an array" in info.value.reason


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("^[a-z]+$", "python", True),
        ("^[a-z]+$", "python\n", False),  # ECMA $ is the end of input, not before a newline
        ("^[$]+$", "$$", True),  # a $ in a class is a character
        (r"^\$x$", "$x", True),  # an escaped $ too
        ("^[]$]+$", "]$", True),  # ] first in a class is a member
        ("^[^]$]+$", "ab", True),
        ("^[^]$]+$", "a]", False),
        ("a", "cat", True),  # JSON Schema patterns are not anchored
    ],
)
def test_schema_patterns_keep_their_json_schema_meaning(
    pattern: str, text: str, matches: bool
) -> None:
    from deepexec_protocol import _validators

    assert (_validators.compile_pattern(pattern)(text) is not None) is matches


def test_an_environment_value_is_never_quoted_in_the_error() -> None:
    """Environment values may be secrets: the error names the key, not the value."""
    with pytest.raises(StructureError) as info:
        structure(
            changed(CODE, "input.environment", {"TOKEN": "s3cr3t\x00tail"}),
            models.CodeExecutionRequest,
        )
    assert "s3cr3t" not in str(info.value) and "tail" not in str(info.value)
    # any other character is fine, the longest allowed value too
    ok = changed(CODE, "input.environment", {"A": "\t\n\x01é" + "x" * 4092})
    assert structure(ok, models.CodeExecutionRequest).input.environment is not None
