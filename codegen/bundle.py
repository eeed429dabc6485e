"""Bundle the multi-file protocol schema into one self-contained JSON Schema document.

Every file under ``schema/`` keeps its types in ``$defs``; cross-file references such as
``common.schema.json#/$defs/JobId`` become local ``#/$defs/JobId``. Type names are global:
the same name defined in two files is an error, so the bundle never silently merges two types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT_FILE = "protocol.schema.json"
BUNDLE_ID = "https://deepexec.dev/schema/2024.1/deepexec.bundle.schema.json"


class SchemaError(Exception):
    """The schema sources are inconsistent (duplicate type, dangling reference)."""


def _rewrite_refs(node: Any, here: str) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                target_file, _, pointer = value.partition("#")
                if not pointer.startswith("/$defs/") or "/" in pointer[len("/$defs/"):]:
                    raise SchemaError(f"{here}: unsupported $ref {value!r} (only #/$defs/Name)")
                out[key] = "#" + pointer
            else:
                out[key] = _rewrite_refs(value, here)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, here) for v in node]
    return node


def _rewrite_op_refs(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def local(ref: str | None) -> str | None:
        return None if ref is None else "#" + ref.partition("#")[2]

    return [
        {**op, **{k: local(op[k]) for k in ("request", "response", "stream_event", "query")}}
        for op in ops
    ]


def load_sources(schema_dir: Path) -> dict[str, dict[str, Any]]:
    """Read every ``*.schema.json`` file of the schema directory, by file name."""
    return {
        p.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(schema_dir.glob("*.schema.json"))
    }


def bundle(schema_dir: Path) -> dict[str, Any]:
    """Return the self-contained bundle of the schema directory."""
    sources = load_sources(schema_dir)
    if ROOT_FILE not in sources:
        raise SchemaError(f"{schema_dir}: missing {ROOT_FILE}")
    root = sources[ROOT_FILE]
    defs: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, doc in sources.items():
        for type_name, type_schema in doc.get("$defs", {}).items():
            if type_name in defs:
                raise SchemaError(f"type {type_name} defined in {origin[type_name]} and {name}")
            defs[type_name] = _rewrite_refs(type_schema, name)
            origin[type_name] = name
    out: dict[str, Any] = {
        "$schema": root["$schema"],
        "$id": BUNDLE_ID,
        "title": root["title"],
        "description": root["description"],
        "x-protocol-version": root["x-protocol-version"],
        "x-operations": _rewrite_op_refs(root["x-operations"]),
        "x-error-codes": root["x-error-codes"],
        "x-exception-bases": root["x-exception-bases"],
        "$defs": dict(sorted(defs.items())),
    }
    _check_refs(out, set(defs))
    return out


def _check_refs(node: Any, names: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "request", "response", "stream_event", "query") and isinstance(
                value, str
            ) and value.startswith("#/$defs/"):
                if value[len("#/$defs/"):] not in names:
                    raise SchemaError(f"dangling reference {value}")
            else:
                _check_refs(value, names)
    elif isinstance(node, list):
        for v in node:
            _check_refs(v, names)
