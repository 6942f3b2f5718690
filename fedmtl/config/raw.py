"""The raw config mapping (YAML as read) and the one way to change it: ``key.path=value``.

``--set``, a study arm's ``set``, a sweep point and ``flwr run``'s run config all go through
:func:`set_path`, so the same key path gives the same config whichever way it is set. Setting the
``name`` of a component to another component (``server.aggregator.name=pcgrad`` where the aggregator was
``{name: fedavg, weighted: true}``) starts that component from its own defaults: the old one's
parameters are dropped, since they need not exist on the new one.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.core.errors import ConfigError
from fedmtl.core.typed import is_component


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``key.path=value`` (value parsed as YAML) to the raw config mapping in place."""
    if "=" not in assignment:
        raise ConfigError("--set", f"expected key.path=value, got {assignment!r}")
    path, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(path, f"value {text!r} is not valid YAML ({err.problem})") from None
    set_path(raw, path.strip(), value, "--set")


def set_path(raw: dict[str, Any], path: str, value: Any, source: str) -> None:
    """Set ``raw[k1][k2]...`` for ``path = "k1.k2..."`` in place (creating mappings on the way)."""
    keys = path.split(".")
    if not all(keys):
        raise ConfigError(source, f"bad key path {path!r}")
    node, node_type = raw, ExperimentConfig
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if isinstance(child, str):  # a component given by bare name, e.g. aggregator: cagrad
            child = node[key] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(".".join(keys[: depth + 1]), f"is not a mapping, cannot set {path}")
        node, node_type = child, field_type(node_type, node, key)
    if keys[-1] == "name" and is_component(node_type) and node.get("name", value) != value:
        node.clear()  # another component: it starts from its own defaults
    node[keys[-1]] = value


def field_type(owner: Any, node: dict[str, Any], key: str) -> Any:
    """The declared type of ``owner``'s field ``key`` (a dataclass, a component kind), or None where the
    schema says nothing more (free-form mappings, unknown keys: the parser reports those)."""
    if is_component(owner):  # the fields of the component the node names
        name = node.get("name")
        owner = owner.REGISTRY[name] if isinstance(name, str) and name in owner.REGISTRY else None
    if not (isinstance(owner, type) and dataclasses.is_dataclass(owner)):
        return None
    hint = get_type_hints(owner).get(key)
    if get_origin(hint) in (Union, types.UnionType):  # X | None: the non-None option
        options = [option for option in get_args(hint) if option is not type(None)]
        hint = options[0] if len(options) == 1 else None
    return hint


def load_raw(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ConfigError("--config", f"file not found: {file}")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("--config", f"{file} is not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("--config", f"{file} must hold a mapping at the top level")
    return raw
