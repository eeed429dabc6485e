"""Markdown field tables of every message type, for PROTOCOL.md (generated, never hand-kept)."""

from __future__ import annotations

from typing import Any

_CONSTRAINTS = (
    ("minLength", "min length {}"), ("maxLength", "max length {}"), ("pattern", "pattern `{}`"),
    ("minimum", ">= {}"), ("maximum", "<= {}"), ("exclusiveMinimum", "> {}"),
    ("exclusiveMaximum", "< {}"), ("maxItems", "at most {} items"),
    ("maxProperties", "at most {} entries"), ("default", "default `{}`"), ("const", "always `{}`"),
)


def _type(s: dict[str, Any]) -> str:
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "const" in s:
        return "string"
    for key in ("anyOf", "oneOf"):
        if key in s:
            return " \\| ".join(_type(x) for x in s[key])
    t = s.get("type", "any")
    if isinstance(t, list):
        return " \\| ".join(t)
    if t == "array":
        return f"array of {_type(s.get('items', {}))}"
    if "enum" in s:
        return " \\| ".join(f"`{v}`" for v in s["enum"])
    return str(t)


def _listed(s: dict[str, Any]) -> list[str]:
    return [fmt.format(s[k]) for k, fmt in _CONSTRAINTS if k in s]


def _constraints(s: dict[str, Any]) -> str:
    out = _listed(s)
    names = s.get("propertyNames")
    if isinstance(names, dict) and "pattern" in names:
        out.append(f"names: pattern `{names['pattern']}`")
    values = s.get("additionalProperties")
    if isinstance(values, dict):
        inner = _listed(values)
        if inner:
            out.append("values: " + ", ".join(inner))
    return "; ".join(out).replace("|", "\\|")


def _operations(bundle: dict[str, Any]) -> list[str]:
    lines = [
        "### Operations\n",
        "| operation | method and path | request | response / stream events | idempotent |",
        "|---|---|---|---|---|",
    ]
    for op in bundle["x-operations"]:
        req = op["request"].rsplit("/", 1)[-1] if op["request"] else "—"
        if op["response"]:
            resp = op["response"].rsplit("/", 1)[-1]
            answer = f"[{resp}](#{resp.lower()})"
        else:
            event = op["stream_event"].rsplit("/", 1)[-1]
            answer = f"`text/event-stream` of [{event}](#{event.lower()})"
        if op["query"]:
            q = op["query"].rsplit("/", 1)[-1]
            req = f"query [{q}](#{q.lower()})"
        elif op["request"]:
            req = f"[{req}](#{req.lower()})"
        idem = "yes" + (" (Idempotency-Key)" if op["idempotency_key"] else "")
        lines.append(
            f"| `{op['name']}` | `{op['method']} {op['path']}` | {req} | {answer} "
            f"| {idem if op['idempotent'] else 'no'} |"
        )
    lines.append("")
    lines += [
        "### Error codes\n",
        "| code | HTTP status | SDK exception | retried by the SDK | meaning |",
        "|---|---|---|---|---|",
    ]
    for code, info in bundle["x-error-codes"].items():
        lines.append(
            f"| `{code}` | {info['http_status']} | `{info['exception']}` "
            f"| {'yes' if info['retryable'] else 'no'} | {info['description']} |"
        )
    lines.append("")
    return lines


def protocol_tables(bundle: dict[str, Any]) -> str:
    lines: list[str] = _operations(bundle)
    lines.append("## Message types\n")
    for name, s in bundle["$defs"].items():
        lines.append(f"### {name}\n")
        lines.append(" ".join(s.get("description", "").split()) + "\n")
        if s.get("type") == "object" and "properties" in s:
            required = set(s.get("required", []))
            lines.append("| field | type | required | constraints | description |")
            lines.append("|---|---|---|---|---|")
            for field, fs in s["properties"].items():
                desc = " ".join(fs.get("description", "").split()).replace("|", "\\|")
                lines.append(
                    f"| `{field}` | {_type(fs)} | {'yes' if field in required else 'no'} "
                    f"| {_constraints(fs)} | {desc} |"
                )
            lines.append("")
        elif "enum" in s:
            lines.append("Values: " + ", ".join(f"`{v}`" for v in s["enum"]) + "\n")
        elif "oneOf" in s:
            lines.append("One of: " + ", ".join(_type(x) for x in s["oneOf"]) + "\n")
        else:
            lines.append(f"Type: {_type(s)}" + (f"; {_constraints(s)}" if _constraints(s) else "")
                         + "\n")
    return "\n".join(lines) + "\n"
