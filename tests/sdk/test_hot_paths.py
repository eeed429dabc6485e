"""The per-call fast paths of the facade send and raise exactly what the general paths do.

``execute_code_and_wait`` builds and validates its envelope inline (not through
``_envelope`` / ``_validated``), ``_call`` runs a first attempt that succeeds without the
retry or logging wrappers, and Idempotency-Keys are formatted by hand instead of by
``uuid.uuid4()``.
"""

from __future__ import annotations

import collections
import uuid
from typing import Any

import orjson
import pytest
from aioresponses import aioresponses
from deepexec_protocol import PROTOCOL_VERSION
from deepexec_protocol import models as m
from deepexec_protocol.converter import unstructure

from deepexec_sdk._client import DeepExecAsyncClient, _new_idempotency_key, _validated
from deepexec_sdk.exceptions import MCPValidationError

from .conftest import BASE, CLIENT_TEST, SESSION_ID, Facade, execution, ok, sent

pytestmark = CLIENT_TEST

EXECUTE = f"{BASE}/v1/execute"


def test_idempotency_keys_are_random_uuid4_strings() -> None:
    keys = [_new_idempotency_key() for _ in range(4000)]
    assert len(set(keys)) == len(keys)
    variants = collections.Counter()
    for key in keys:
        parsed = uuid.UUID(key)
        assert str(parsed) == key  # lower-case, 8-4-4-4-12
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        variants[key[19]] += 1
    # the two random bits of the variant nibble: all four values turn up
    assert set(variants) == set("89ab")


def _reference_body(
    code: str,
    language: str,
    environment: dict[str, str] | None = None,
    timeout: float | None = None,
    stdin: str | None = None,
    session_id: str | None = None,
    memory_limit: int | None = None,
) -> bytes:
    """The request body as the general path makes it: every input field, the None ones
    dropped, validated by _validated, serialized from the model."""
    data: dict[str, Any] = {
        "code": code,
        "language": language,
        "environment": environment,
        "timeout": timeout,
        "stdin": stdin,
        "memory_limit": memory_limit,
    }
    envelope: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION,
        "type": "code_execution",
        "input": {k: v for k, v in data.items() if v is not None},
    }
    if session_id is not None:
        envelope["session_id"] = session_id
    return orjson.dumps(unstructure(_validated(envelope, m.CodeExecutionRequest)))


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (("print(1)", "python"), {}),
    (("echo hi", "bash", {"A": "1"}, 30, "in", SESSION_ID), {"memory_limit": 64 * 2**20}),
    (("x", "python"), {"timeout": 5, "session_id": SESSION_ID}),
    (("x", "python", None, 2.5), {"stdin": ""}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
async def test_execute_code_and_wait_sends_the_bytes_of_the_general_path(
    facade: Facade, mock_http: aioresponses, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    mock_http.post(EXECUTE, payload=ok("code_execution", execution()))
    await facade("execute_code_and_wait", *args, **kwargs)
    (call,) = sent(mock_http, "POST", EXECUTE)
    assert call.kwargs["data"] == _reference_body(*args, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("print(1)", "Py thon"), {}),
        (("", "python"), {}),
        (("x", "python"), {"timeout": -1}),
        (("x", "python"), {"session_id": "sess_x"}),
        (("x", "python"), {"environment": {"A": 1}}),
        (("x", "python"), {"memory_limit": 1}),
    ],
)
async def test_execute_code_and_wait_raises_the_validation_error_of_the_general_path(
    mock_http: aioresponses, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(MCPValidationError) as expected:
        _reference_body(*args, **kwargs)
    async with DeepExecAsyncClient(endpoint=BASE, max_retries=0) as client:
        with pytest.raises(MCPValidationError) as raised:
            await client.execute_code_and_wait(*args, **kwargs)
    assert str(raised.value) == str(expected.value)
    assert raised.value.details == expected.value.details
    assert raised.value.code == "validation_error"
    assert mock_http.requests == {}
