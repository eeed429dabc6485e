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
    compiled = re.compile(regex)

    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is not None and compiled.search(value) is None:
            raise ValueError(f"{attr.name}: {value[:80]!r} does not match {regex}")

    return check


def _bound(op: str, limit: float, test: Callable[[Any], bool]) -> Validator:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is not None and not test(value):
            raise ValueError(f"{attr.name}: must be {op} {limit} (got {value!r})")

    return check


def ge(limit: float) -> Validator:
    return _bound(">=", limit, lambda v: v >= limit)


def le(limit: float) -> Validator:
    return _bound("<=", limit, lambda v: v <= limit)


def gt(limit: float) -> Validator:
    return _bound(">", limit, lambda v: v > limit)


def lt(limit: float) -> Validator:
    return _bound("<", limit, lambda v: v < limit)


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
    compiled = re.compile(regex)

    def check(_inst: Any, attr: Any, value: Mapping[str, Any] | None) -> None:
        if value is None:
            return
        for key in value:
            if compiled.search(key) is None:
                raise ValueError(f"{attr.name}: key {key[:80]!r} does not match {regex}")

    return check


def values_max_len(n: int) -> Validator:
    def check(_inst: Any, attr: Any, value: Mapping[str, Any] | None) -> None:
        if value is None:
            return
        for key, item in value.items():
            if len(item) > n:
                raise ValueError(f"{attr.name}[{key!r}]: must be at most {n} characters long")

    return check


def date_time(_inst: Any, attr: Any, value: Any) -> None:
    if value is None:
        return
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{attr.name}: {value[:40]!r} is not an RFC 3339 date-time") from None
    if parsed.tzinfo is None or "T" not in value:
        raise ValueError(f"{attr.name}: {value[:40]!r} is not an RFC 3339 date-time with offset")
