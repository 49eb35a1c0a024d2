"""Typed reads from a decoded webhook payload, for :mod:`bot.events`.

A signed payload is still untrusted input: every read checks the JSON type it expects and
raises :class:`~bot.events.MalformedDelivery` naming the field, so a wrong shape is answered 400
with the reason, never an AttributeError deep in a parser (a 500).
"""

from __future__ import annotations

import typing as t


class MalformedDelivery(ValueError):
    """The body or headers cannot be understood (the webhook answers 400 with this message)."""


_MISSING = object()


def _node(payload: t.Any, path: tuple[str, ...], required: bool) -> t.Any:
    node: t.Any = payload
    for i, part in enumerate(path):
        if not isinstance(node, dict):
            raise MalformedDelivery(f"payload field `{'.'.join(path[:i]) or '(body)'}` is "
                                    f"{_kind(node)}, expected an object")
        if node.get(part) is None:
            if required:
                raise MalformedDelivery(f"payload lacks `{'.'.join(path)}`")
            return _MISSING
        node = node[part]
    return node


def _kind(value: t.Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _wrong(path: tuple[str, ...], value: t.Any, expected: str) -> MalformedDelivery:
    return MalformedDelivery(f"payload field `{'.'.join(path)}` is {_kind(value)}, expected {expected}")


def obj(payload: t.Any, *path: str, required: bool = True) -> dict[str, t.Any]:
    """An object field (``{}`` when optional and absent)."""
    value = _node(payload, path, required)
    if value is _MISSING:
        return {}
    if not isinstance(value, dict):
        raise _wrong(path, value, "an object")
    return value


def text(payload: t.Any, *path: str, required: bool = True, default: str = "") -> str:
    """A string field (``default`` when optional and absent)."""
    value = _node(payload, path, required)
    if value is _MISSING:
        return default
    if not isinstance(value, str):
        raise _wrong(path, value, "a string")
    return value


def integer(payload: t.Any, *path: str, required: bool = True) -> int | None:
    """An integer field (a decimal string is accepted, as ``int()`` did; None when optional and
    absent)."""
    value = _node(payload, path, required)
    if value is _MISSING:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _wrong(path, value, "an integer")
    if isinstance(value, str) and not (value.strip().isascii() and value.strip().isdigit()):
        raise _wrong(path, value, "an integer")
    return int(value)


def count(payload: t.Any, *path: str) -> int:
    """The length of an optional array field."""
    value = _node(payload, path, False)
    if value is _MISSING:
        return 0
    if not isinstance(value, list):
        raise _wrong(path, value, "an array")
    return len(value)
