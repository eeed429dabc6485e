"""Validators for the schema's constraints, used by the generated attrs models.

Each factory returns an attrs validator ``(instance, attribute, value) -> None`` that accepts
None (optional fields are validated only when present) and raises ValueError with a message
naming the constraint; the converter adds the field path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

Validator = Callable[[Any, Any, Any], None]


def _ecma_to_python(regex: str) -> str:
    """A JSON Schema (ECMA-262) ``pattern`` as a Python regex with the same meaning.

    ECMA's ``$`` (without the multiline flag) matches only at the very end of the input;
    Python's ``$`` also matches before a final newline, so ``^[a-z]+$`` would accept
    ``"python\\n"``. Every ``$`` outside a character class becomes ``\\Z``.
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(regex):
        char = regex[i]
        if char == "\\":
            out.append(regex[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            # a ']' right after '[' or '[^' is a literal member of the class
            out.append(char)
            i += 1
            if regex[i : i + 1] == "^":
                out.append("^")
                i += 1
            if regex[i : i + 1] == "]":
                out.append("]")
                i += 1
            continue
        elif char == "$":
            out.append(r"\Z")
            i += 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


def compile_pattern(regex: str) -> Callable[[str], re.Match[str] | None]:
    """The ``search`` of a JSON Schema ``pattern`` (unanchored, as JSON Schema says)."""
    return re.compile(_ecma_to_python(regex)).search


#: how many matching values a remembering search keeps, and how long they may be
SEEN_MAX = 256
SEEN_MAX_LEN = 64


def remembering_search(
    regex: str,
) -> tuple[Callable[[str], re.Match[str] | None], Collection[str]]:
    """``compile_pattern(regex)``, plus the set of values it has found a match in.

    The converter's hooks test ``v.__class__ is str and v in seen`` before searching: values
    that recur on every message (``protocol_version``, ``language``) then cost a set lookup,
    not a regex search, with the same answer (whether a string matches depends on the string
    alone). Only exact ``str`` values up to SEEN_MAX_LEN characters are kept (a subclass
    could compare equal to a remembered value without being one), at most SEEN_MAX of them.
    """
    search = compile_pattern(regex)
    seen: set[str] = set()

    def remembering(value: str) -> re.Match[str] | None:
        match = search(value)
        if match is not None and value.__class__ is str and len(value) <= SEEN_MAX_LEN:
            if len(seen) >= SEEN_MAX:
                seen.clear()
            seen.add(value)
        return match

    return remembering, seen


def min_len(n: int) -> Validator:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is not None and len(value) < n:
            raise ValueError(f"{attr.name}: must be at least {n} characters long")

    return check


def max_len(n: int) -> Validator:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is not None and len(value) > n:
            raise ValueError(f"{attr.name}: must be at most {n} characters long (got {len(value)})")

    return check


def pattern(regex: str) -> Validator:
    search = compile_pattern(regex)

    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is not None and search(value) is None:
            raise ValueError(f"{attr.name}: {value[:80]!r} does not match {regex}")

    return check


def _fail(attr: Any, op: str, limit: float, value: Any) -> ValueError:
    return ValueError(f"{attr.name}: must be {op} {limit} (got {value!r})")


# ``not value >= limit`` rather than ``value < limit``: NaN fails every bound
def ge(limit: float) -> Validator:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is not None and not value >= limit:
            raise _fail(attr, ">=", limit, value)

    return check


def le(limit: float) -> Validator:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is not None and not value <= limit:
            raise _fail(attr, "<=", limit, value)

    return check


def gt(limit: float) -> Validator:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is not None and not value > limit:
            raise _fail(attr, ">", limit, value)

    return check


def lt(limit: float) -> Validator:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is not None and not value < limit:
            raise _fail(attr, "<", limit, value)

    return check


def min_items(n: int) -> Validator:
    def check(_inst: Any, attr: Any, value: Collection[Any] | None) -> None:
        if value is not None and len(value) < n:
            raise ValueError(f"{attr.name}: must have at least {n} items")

    return check


def max_items(n: int) -> Validator:
    def check(_inst: Any, attr: Any, value: Collection[Any] | None) -> None:
        if value is not None and len(value) > n:
            raise ValueError(f"{attr.name}: must have at most {n} items (got {len(value)})")

    return check


def unique_items(_inst: Any, attr: Any, value: Any) -> None:
    if value is not None and len(set(value)) != len(value):
        raise ValueError(f"{attr.name}: items must be unique")


def each(*validators: Validator) -> Validator:
    def check(inst: Any, attr: Any, value: Collection[Any] | None) -> None:
        if value is None:
            return
        for i, item in enumerate(value):
            for v in validators:
                try:
                    v(inst, attr, item)
                except ValueError as exc:
                    raise ValueError(f"{attr.name}[{i}]: {str(exc).split(': ', 1)[-1]}") from None

    return check


def keys_match(regex: str) -> Validator:
    search = compile_pattern(regex)

    def check(_inst: Any, attr: Any, value: Mapping[str, Any] | None) -> None:
        if value is None:
            return
        for key in value:
            if search(key) is None:
                raise ValueError(f"{attr.name}: key {key[:80]!r} does not match {regex}")

    return check


def values_match(regex: str) -> Validator:
    """Every value of a mapping matches ``regex`` (the message names the key, never the
    value: values may be secrets)."""
    search = compile_pattern(regex)

    def check(_inst: Any, attr: Any, value: Mapping[str, Any] | None) -> None:
        if value is None:
            return
        for key, item in value.items():
            if search(item) is None:
                raise ValueError(f"{attr.name}[{key[:80]!r}]: the value does not match {regex}")

    return check


def values_max_len(n: int) -> Validator:
    def check(_inst: Any, attr: Any, value: Mapping[str, Any] | None) -> None:
        if value is None:
            return
        for key, item in value.items():
            if len(item) > n:
                raise ValueError(f"{attr.name}[{key!r}]: must be at most {n} characters long")

    return check


_fromisoformat = datetime.fromisoformat


def date_time(_inst: Any, attr: Any, value: Any) -> None:
    if value is None:
        return
    try:
        parsed = _fromisoformat(value)
    except ValueError:
        raise ValueError(f"{attr.name}: {value[:40]!r} is not an RFC 3339 date-time") from None
    if parsed.tzinfo is None or "T" not in value:
        raise ValueError(f"{attr.name}: {value[:40]!r} is not an RFC 3339 date-time with offset")
