"""Checking a config value from a TOML file or a flag against its field's type annotation."""

from __future__ import annotations

import types
import typing
from typing import Any


def coerce(name: str, value: Any, tp: Any, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are, and a
    comma-separated string (a flag) where a list is."""

    from .config import ConfigError

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: '{name}' must be {expected}, got {value!r}", field=name)

    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1]
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
            if inner is float:
                try:
                    value = [float(v) for v in value]
                except ValueError:
                    raise bad("a list of numbers") from None
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list of {inner.__name__}")
        return [coerce(name, v, inner, source) for v in value]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation on {name}")
    checks = {
        bool: (lambda v: isinstance(v, bool), "true or false"),
        int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
        str: (lambda v: isinstance(v, str), "a string"),
    }
    if tp not in checks:
        raise TypeError(f"unsupported annotation on {name}: {tp}")
    ok, expected = checks[tp]
    if not ok(value):
        raise bad(expected)
    return float(value) if tp is float else value
