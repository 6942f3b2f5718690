"""Parse plain YAML data into frozen dataclasses, reporting every problem by key path.

Supported field types: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``Literal``,
``X | None``, unions tried in order, ``tuple[T, ...]``, ``tuple[A, B]``, ``Mapping[str, T]``,
nested dataclasses, and *components*: a subclass of :class:`fedmtl.core.registry.Component` whose
``REGISTRY`` maps ``name -> dataclass`` (YAML ``{name: cagrad, c: 0.4}`` builds ``CAGrad(c=0.4)``).

Range checks live in each dataclass's ``__post_init__`` and raise ``ValueError``; the parser
re-raises them as :class:`ConfigError` at the dataclass's path.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from fedmtl.core.errors import ConfigError, FieldError
from fedmtl.core.registry import Component

_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def is_component(tp: Any) -> bool:
    """Whether fields typed ``tp`` are parsed as ``{name: ..., **params}`` through ``tp.REGISTRY``."""
    return isinstance(tp, type) and issubclass(tp, Component)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def parse(tp: Any, value: Any, path: str) -> Any:
    """Parse ``value`` as type ``tp``; raise :class:`ConfigError` naming ``path`` on mismatch."""
    origin = get_origin(tp)
    if tp is Any:  # raw YAML (e.g. sweep values, validated by building the configs they make)
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(path, "must not be empty")
        errors: list[ConfigError] = []
        for option in options:
            if option is type(None):
                continue
            try:
                return parse(option, value, path)
            except ConfigError as err:
                errors.append(err)
        # An option of the value's own shape (a mapping for a dataclass) explains better than "must be a string".
        relevant = [e for e in errors if not e.message.startswith("must be a")] or errors
        if len(relevant) == 1:  # the one option the value was meant as: its error, at its own key path
            raise relevant[0]
        raise ConfigError(path, " or ".join(dict.fromkeys(e.message for e in relevant)))
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"must be a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse(args[0], item, join(path, i)) for i, item in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(path, f"must be a list of {len(args)} items, got {len(value)}")
        return tuple(parse(a, item, join(path, i)) for i, (a, item) in enumerate(zip(args, value)))
    if origin in (Mapping, dict, typing.Mapping) or tp is dict:
        key_tp, value_tp = get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"must be a mapping, got {type(value).__name__}")
        return types.MappingProxyType(
            {parse(key_tp, k, join(path, str(k))): parse(value_tp, v, join(path, str(k))) for k, v in value.items()}
        )
    if is_component(tp):
        return parse_component(tp, value, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return parse_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):  # YAML 1.1 reads 1e-8 as a string
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)} at {path}")


def parse_dataclass(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad values name their path."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"must be a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(join(path, str(unknown[0])), f"unknown key; valid keys: {', '.join(sorted(fields))}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            value = _with_default_component_name(hints[name], field, data[name])
            kwargs[name] = parse(hints[name], value, join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(join(path, name), "required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except FieldError as err:
        raise ConfigError(join(path, err.key), err.message) from None
    except ValueError as err:
        raise ConfigError(path, str(err)) from None


def _with_default_component_name(tp: Any, field: dataclasses.Field, value: Any) -> Any:
    """``{c: 0.5}`` for a component field keeps the default component's name."""
    if not (is_component(tp) and isinstance(value, Mapping)) or "name" in value:
        return value
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    elif field.default is not dataclasses.MISSING:
        default = field.default
    else:
        return value
    return {"name": type(default).name, **value}


def parse_component(base: type[Component], data: Any, path: str) -> Any:
    """``{name: x, **params}`` -> ``REGISTRY[x](**params)``, or a bare ``"x"`` with defaults."""
    registry = base.REGISTRY
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping) or "name" not in data:
        raise ConfigError(path, f"must be a mapping with a 'name' (one of {', '.join(sorted(registry))})")
    name = data["name"]
    if name not in registry:
        raise ConfigError(join(path, "name"), f"unknown {registry.kind} {name!r}; valid: {', '.join(sorted(registry))}")
    params = {k: v for k, v in data.items() if k != "name"}
    return parse_dataclass(registry[name], params, path)


def to_plain(value: Any) -> Any:
    """Inverse of :func:`parse`: dataclasses and components back to YAML-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        plain = {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        if isinstance(value, Component):
            return {"name": type(value).name, **plain}  # type: ignore[attr-defined]  # components declare name
        return plain
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    return value
