"""Derive an OpenAPI 3.1 document from the bundled schema (x-operations + $defs)."""

from __future__ import annotations

import json
from typing import Any

_HEADERS = [
    ("X-Request-ID", "Client-chosen request id, echoed back in the response header.", False),
    ("X-DeepSeek-Key", "DeepSeek API key for this request (never logged, never echoed).", False),
    ("X-E2B-Key", "E2B API key for this request (never logged, never echoed).", False),
]


def _to_components(node: Any) -> Any:
    text = json.dumps(node).replace('"#/$defs/', '"#/components/schemas/')
    return json.loads(text)


def _ref(name: str | None) -> dict[str, str] | None:
    return None if name is None else {"$ref": "#/components/schemas/" + name.rsplit("/", 1)[-1]}


def to_openapi(bundle: dict[str, Any]) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the protocol."""
    defs = bundle["$defs"]
    statuses = sorted({v["http_status"] for v in bundle["x-error-codes"].values()})
    paths: dict[str, dict[str, Any]] = {}
    for op in bundle["x-operations"]:
        params: list[dict[str, Any]] = []
        for p in op["path_params"]:
            schema_name = {"job_id": "JobId", "session_id": "SessionId"}.get(p)
            params.append({
                "name": p, "in": "path", "required": True,
                "schema": _ref(schema_name) if schema_name else {"type": "string"},
            })
        if op["query"]:
            qdef = defs[op["query"].rsplit("/", 1)[-1]]
            for pname, pschema in qdef["properties"].items():
                params.append({
                    "name": pname, "in": "query", "required": False,
                    "description": pschema.get("description", ""),
                    "schema": _to_components(pschema),
                })
        for hname, hdesc, required in _HEADERS:
            params.append({"name": hname, "in": "header", "required": required,
                           "description": hdesc, "schema": {"type": "string"}})
        if op["idempotency_key"]:
            params.append({
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": "The same key with the same body returns the first answer.",
                "schema": {"type": "string", "maxLength": 255},
            })
        responses: dict[str, Any] = {}
        if op["response"]:
            ok = {"application/json": {"schema": _ref(op["response"])}}
            err_schema = _ref(op["response"])
        else:
            ok = {"text/event-stream": {"schema": _ref(op["stream_event"]),
                                        "x-stream-terminal": op["stream_terminal"]}}
            err_schema = {"type": "object", "description": "A response envelope with status error."}
        responses["200"] = {"description": "Success.", "content": ok}
        for status in statuses:
            codes = [c for c, v in bundle["x-error-codes"].items() if v["http_status"] == status]
            responses[str(status)] = {
                "description": "Error envelope; error.code is one of: " + ", ".join(codes) + ".",
                "content": {"application/json": {"schema": err_schema}},
            }
        operation: dict[str, Any] = {
            "operationId": op["name"],
            "summary": op["description"],
            "parameters": params,
            "responses": responses,
            "x-idempotent": op["idempotent"],
        }
        if op["request"]:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(op["request"])}},
            }
        paths.setdefault(op["path"], {})[op["method"].lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": bundle["title"],
            "version": bundle["x-protocol-version"],
            "description": bundle["description"],
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "http://127.0.0.1:8787", "description": "local reference server"}],
        "security": [{"bearer": []}, {}],
        "paths": paths,
        "components": {
            "schemas": _to_components(defs),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "x-error-codes": bundle["x-error-codes"],
    }
