"""The generator's intermediate representation, built from the bundled schema.

datamodel-code-generator parses the bundle (its JsonSchemaParser resolves references, names
inline types and computes Python type hints); this module reads that model metadata and adds
what our templates need and the parser does not keep: wire names, nullability, the
constraints that become attrs validators, union tags, and the operation table.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from datamodel_code_generator import DataModelType, PythonVersion
from datamodel_code_generator.model import get_data_model_types
from datamodel_code_generator.parser.jsonschema import JsonSchemaParser


@dataclass
class FieldIR:
    name: str
    wire_name: str
    type_hint: str
    required: bool
    default: str | None  # Python source of the default, None when there is none
    description: str
    validators: list[str]
    const: str | None = None


@dataclass
class ModelIR:
    name: str
    description: str
    fields: list[FieldIR]
    strict: bool = False  # reject unknown keys (request-side models)
    tag: str | None = None  # value of the const 'type' discriminator


@dataclass
class EnumIR:
    name: str
    description: str
    members: list[tuple[str, str]]
    # in no request or query: a newer MINOR version may add values, which clients keep
    response_only: bool = False


@dataclass
class AliasIR:
    name: str
    description: str
    target: str
    validators: list[str] = field(default_factory=list)
    union_members: list[str] = field(default_factory=list)


@dataclass
class OperationIR:
    name: str
    method: str
    path: str
    description: str
    request: str | None
    response: str | None
    output: str | None
    stream_event: str | None
    idempotent: bool
    idempotency_key: bool
    path_params: list[str]
    query: str | None
    stream_terminal: list[str]


@dataclass
class ErrorCodeIR:
    code: str
    http_status: int
    exception: str
    retryable: bool
    description: str


@dataclass
class ProtocolIR:
    version: str
    title: str
    description: str
    enums: list[EnumIR]
    aliases: list[AliasIR]
    models: list[ModelIR]
    unions: list[AliasIR]
    operations: list[OperationIR]
    error_codes: list[ErrorCodeIR]
    exception_bases: dict[str, str]

    @property
    def response_only_enums(self) -> list[str]:
        """The enums no request or query contains (their unknown values are kept)."""
        return [e.name for e in self.enums if e.response_only]


def _ref_name(ref: str | None) -> str | None:
    return None if ref is None else ref.rsplit("/", 1)[-1]


def _parse_models(bundle: dict[str, Any]) -> list[Any]:
    # we take the parser's model metadata, not its formatted output
    warnings.filterwarnings("ignore", category=FutureWarning, module="datamodel_code_generator")
    types = get_data_model_types(
        DataModelType.DataclassesDataclass, target_python_version=PythonVersion.PY_311
    )
    parser = JsonSchemaParser(
        json.dumps(bundle),
        data_model_type=types.data_model,
        data_model_root_type=types.root_model,
        data_model_field_type=types.field_model,
        data_type_manager_type=types.data_type_manager,
        dump_resolve_reference_action=types.dump_resolve_reference_action,
        use_standard_collections=True,
        use_union_operator=True,
        field_constraints=True,
        use_title_as_name=True,
    )
    parser.parse()
    return list(parser.results)


def _strip_none(hint: str) -> str:
    parts = [p.strip() for p in hint.split("|")]
    return " | ".join(p for p in parts if p != "None")


class _Constraints:
    """Turns a property's JSON Schema into validator expressions (module _validators as _v)."""

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def nullable(self, prop: dict[str, Any]) -> bool:
        t = prop.get("type")
        if isinstance(t, list) and "null" in t:
            return True
        return any(s.get("type") == "null" for s in prop.get("anyOf", []))

    def _scalar(self, s: dict[str, Any]) -> list[str]:
        out: list[str] = []
        if "$ref" in s:
            target = self.defs[_ref_name(s["$ref"]) or ""]
            if target.get("type") == "string" or target.get("type") == "object":
                out += self._scalar({k: v for k, v in target.items() if k != "$ref"})
            return out
        if "minLength" in s:
            out.append(f"_v.min_len({s['minLength']})")
        if "maxLength" in s:
            out.append(f"_v.max_len({s['maxLength']})")
        if "pattern" in s:
            out.append(f"_v.pattern({s['pattern']!r})")
        if s.get("format") == "date-time":
            out.append("_v.date_time")
        for key, fn in (
            ("minimum", "ge"),
            ("maximum", "le"),
            ("exclusiveMinimum", "gt"),
            ("exclusiveMaximum", "lt"),
        ):
            if key in s:
                out.append(f"_v.{fn}({s[key]!r})")
        if "minItems" in s:
            out.append(f"_v.min_items({s['minItems']})")
        if "maxItems" in s:
            out.append(f"_v.max_items({s['maxItems']})")
        if s.get("uniqueItems"):
            out.append("_v.unique_items")
        if "items" in s:
            inner = self._scalar(s["items"])
            if inner:
                out.append(f"_v.each({', '.join(inner)})")
        if "maxProperties" in s:
            out.append(f"_v.max_items({s['maxProperties']})")
        if "propertyNames" in s and "pattern" in s["propertyNames"]:
            out.append(f"_v.keys_match({s['propertyNames']['pattern']!r})")
        addl = s.get("additionalProperties")
        if isinstance(addl, dict) and "maxLength" in addl:
            out.append(f"_v.values_max_len({addl['maxLength']})")
        if isinstance(addl, dict) and "pattern" in addl:
            out.append(f"_v.values_match({addl['pattern']!r})")
        return out

    def validators(self, prop: dict[str, Any]) -> list[str]:
        for sub in prop.get("anyOf", []):
            if sub.get("type") != "null":
                return self._scalar(sub) + self._scalar(
                    {k: v for k, v in prop.items() if k != "anyOf"}
                )
        return self._scalar(prop)


def _reachable(defs: dict[str, Any], roots: list[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        text = json.dumps(defs[name])
        stack.extend(re.findall(r'"#/\$defs/([A-Za-z0-9_]+)"', text))
    return seen


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _request_side(
    roots: set[str], models: list[ModelIR], aliases: list[AliasIR], unions: list[AliasIR]
) -> set[str]:
    """Every type name a request or query can contain, starting from ``roots``: the types of
    the fields of each model reached (arrays, optionals and inline unions included), alias
    targets and union members, transitively. Inline types the parser named (an inline enum
    such as HealthState, array items) are not in $defs, so this follows the type hints."""
    edges: dict[str, set[str]] = {}
    for mdl in models:
        edges[mdl.name] = {
            ident for f in mdl.fields if f.const is None for ident in _IDENT.findall(f.type_hint)
        }
    for a in aliases:
        edges[a.name] = set(_IDENT.findall(a.target))
    for u in unions:
        edges[u.name] = set(u.union_members)
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(edges.get(name, ()))
    return seen


def build_ir(bundle: dict[str, Any]) -> ProtocolIR:
    """Build the IR of the whole protocol from the bundled schema."""
    defs: dict[str, Any] = bundle["$defs"]
    cons = _Constraints(defs)
    ops_raw = bundle["x-operations"]
    strict = _reachable(
        defs, [n for o in ops_raw for n in (_ref_name(o["request"]), _ref_name(o["query"])) if n]
    )
    enums: list[EnumIR] = []
    aliases: list[AliasIR] = []
    models: list[ModelIR] = []
    unions: list[AliasIR] = []
    for m in _parse_models(bundle):
        kind = type(m).__name__
        name = m.class_name
        raw = defs.get(name, {})
        desc = (raw.get("description") or getattr(m, "description", None) or name).strip()
        if kind == "Enum":
            members = [(f.name, str(f.default).strip("'\"")) for f in m.fields]
            enums.append(EnumIR(name, desc, members))
        elif kind == "TypeAlias":
            if name not in defs:
                if m.fields[0].type_hint == "Any":
                    continue  # the root document itself
                # an inline type the parser named (items of an array); constraints stay inline
                aliases.append(AliasIR(name, desc, m.fields[0].type_hint))
                continue
            hint = m.fields[0].type_hint
            if "oneOf" in raw:
                members = [_ref_name(s["$ref"]) or "" for s in raw["oneOf"]]
                unions.append(AliasIR(name, desc, " | ".join(members), union_members=members))
            elif hint == "Any":
                continue  # the root document itself
            else:
                aliases.append(AliasIR(name, desc, hint, validators=cons._scalar(raw)))
        elif kind == "DataClass":
            props: dict[str, Any] = raw.get("properties", {})
            required = set(raw.get("required", []))
            fields: list[FieldIR] = []
            tag = None
            for f in m.fields:
                wire = f.original_name or f.name
                prop = props.get(wire, {})
                fdesc = (prop.get("description") or "").strip()
                hint = f.type_hint
                const = prop.get("const")
                if const is not None:
                    if wire == "type":
                        tag = const
                    fields.append(FieldIR(f.name, wire, f"Literal[{const!r}]", True, repr(const),
                                          fdesc, [], const=const))
                    continue
                nullable = cons.nullable(prop)
                has_default = "default" in prop
                if wire in required:
                    fields.append(FieldIR(f.name, wire, hint if nullable else _strip_none(hint),
                                          True, None, fdesc, cons.validators(prop)))
                elif has_default and prop["default"] is not None:
                    d = prop["default"]
                    default = "attrs.Factory(list)" if d == [] else repr(d)
                    base = _strip_none(hint)
                    fields.append(FieldIR(f.name, wire, f"{base} | None" if nullable else base,
                                          False, default, fdesc, cons.validators(prop)))
                else:
                    base = _strip_none(hint)
                    fields.append(FieldIR(f.name, wire, f"{base} | None", False, "None", fdesc,
                                          cons.validators(prop)))
            # required (no default) first keeps the source readable; kw_only makes order free
            fields.sort(key=lambda x: (x.default is not None and x.const is None, 0))
            models.append(ModelIR(name, desc, fields, strict=name in strict, tag=tag))
    # request side: reached from a request or query by $ref, or by the fields' type hints
    strict |= _request_side(strict, models, aliases, unions)
    for mdl in models:
        mdl.strict = mdl.name in strict
    for enum in enums:
        enum.response_only = enum.name not in strict
    model_names = {m.name: m for m in models}
    operations = []
    for o in ops_raw:
        resp = _ref_name(o["response"])
        output = None
        if resp:
            out_field = next(f for f in model_names[resp].fields if f.wire_name == "output")
            output = _strip_none(out_field.type_hint)
        operations.append(OperationIR(
            name=o["name"], method=o["method"], path=o["path"], description=o["description"],
            request=_ref_name(o["request"]), response=resp, output=output,
            stream_event=_ref_name(o["stream_event"]), idempotent=o["idempotent"],
            idempotency_key=o["idempotency_key"], path_params=list(o["path_params"]),
            query=_ref_name(o["query"]), stream_terminal=list(o.get("stream_terminal", [])),
        ))
    errors = [
        ErrorCodeIR(code, v["http_status"], v["exception"], v["retryable"], v["description"])
        for code, v in bundle["x-error-codes"].items()
    ]
    return ProtocolIR(
        version=bundle["x-protocol-version"], title=bundle["title"],
        description=bundle["description"], enums=enums, aliases=aliases,
        models=sorted(models, key=lambda m: m.name), unions=unions, operations=operations,
        error_codes=errors, exception_bases=dict(bundle["x-exception-bases"]),
    )
