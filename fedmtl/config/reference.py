"""The configuration reference in docs/CONFIGURATION.md, generated from the config dataclasses.

The source is the single source of truth: each field's description is the ``# comment`` on its
line or the comment block right above it, its type and default come from the dataclass, and each
component's summary is the first paragraph of its class docstring. Components are read from the
registries at run time (:func:`fedmtl.core.registry.component_kinds`), so a new aggregator,
balancer or suite appears without touching this file.

Every field reached from :class:`ExperimentConfig` without going through a component must have a
description; the generator fails naming each one that has none. Component parameters show their
comment when they have one (their class docstrings usually explain them).

    python -m fedmtl.config.reference            # print the reference (markdown)
    python -m fedmtl.config.reference --write    # update docs/CONFIGURATION.md between the markers
    python -m fedmtl.config.reference --check    # exit 1 when docs/CONFIGURATION.md is out of date
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from fedmtl.config.source_comments import class_source, description
from fedmtl.core.registry import component_kinds
from fedmtl.core.typed import to_plain

BEGIN = "<!-- BEGIN GENERATED REFERENCE (python -m fedmtl.config.reference --write; do not edit by hand) -->"
END = "<!-- END GENERATED REFERENCE -->"
COMMAND = "python -m fedmtl.config.reference --write"
DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"


class UndocumentedFieldError(ValueError):
    """Config fields without a description comment, each named by key path and source line."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            "config fields without a description (add a `# comment` on the field's line or right above it):\n  "
            + "\n  ".join(missing)
        )


def summary(cls: type) -> str:
    """First paragraph of the class docstring, on one line; for a component without one, of its
    module's docstring when the module defines no other component of the same registry (one method,
    one file)."""
    doc = class_source(cls).docstring
    if doc is None and is_component(cls):
        module = sys.modules[cls.__module__]
        siblings = [
            c
            for registry in component_kinds().values()
            if cls in registry.values()
            for c in registry.values()
            if c.__module__ == cls.__module__
        ]
        doc = inspect.getdoc(module) if len(siblings) <= 1 else None
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


# --- rendering values and types -----------------------------------------------------------------


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def yaml_text(value: Any) -> str:
    """A value as it would be written in the YAML config (flow style, one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def default_text(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if is_component(type(value)):
        base_default = _registry_default(type(value))
        if base_default is not None and base_default == value:
            return code(type(value).name)
    return code(yaml_text(to_plain(value)))


def _registry_default(cls: type) -> Any:
    try:
        return cls()
    except (TypeError, ValueError):
        return None


def component_base(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and tp in component_kinds() else None


def is_component(cls: type) -> bool:
    return any(issubclass(cls, base) for base in component_kinds())


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and component_base(tp) is None


def type_text(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    if origin is Literal:
        return " | ".join(yaml_text(arg) for arg in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_text(args[0])}, ...]"
        return f"tuple[{', '.join(type_text(a) for a in args)}]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in get_args(tp))}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def inner_types(tp: Any) -> Iterator[Any]:
    """``tp`` and every type nested in it (union options, tuple and mapping arguments)."""
    yield tp
    if get_origin(tp) is not Literal:
        for arg in get_args(tp):
            if arg is not Ellipsis:
                yield from inner_types(arg)


def code(text: str) -> str:
    return f"`{text}`" if text else ""


def cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and ``<`` outside code spans (``<run_dir>`` is no HTML tag)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(part if i % 2 else part.replace("<", "\\<") for i, part in enumerate(parts))


def anchor(title: str) -> str:
    """GitHub's heading anchor for a plain-text title."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return "#" + kept.replace(" ", "-")


def components_title(base: type) -> str:
    return f"{base.__name__} components"


# --- walking the config -------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    type: str
    default: str
    description: str


@dataclass
class Table:
    title: str
    intro: str
    rows: list[Row] = field(default_factory=list)


@dataclass
class Walk:
    sections: list[Table] = field(default_factory=list)
    entries: list[Table] = field(default_factory=list)  # dataclasses used as list or mapping entries
    entry_users: dict[type, list[str]] = field(default_factory=dict)  # entry dataclass -> key paths
    used_by: dict[type, list[str]] = field(default_factory=dict)  # component base -> key paths
    missing: list[str] = field(default_factory=list)


def walk(cls: type, prefix: str, title: str, out: Walk, strict: bool, into: list[Table], owner: str = "") -> Table:
    """Rows for dataclass ``cls`` appended to ``into``; nested dataclass fields become tables of their own
    (after it), dataclasses used as entries of lists and mappings go to ``out.entries``. ``owner`` names
    the component whose parameters these are, if any."""
    table = Table(title, summary(cls))
    into.append(table)
    nested: list[tuple[type, str]] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if is_dataclass_type(tp):
            nested.append((tp, key))
            continue
        text, where = description(cls, f.name)
        if strict and not text:
            out.missing.append(f"{key} ({cls.__qualname__}.{f.name}, {where})")
        type_cell = code(type_text(tp))
        for inner in inner_types(tp):
            base = component_base(inner)
            if base is not None:
                out.used_by.setdefault(base, []).append(f"{owner}.{key}" if owner else key)
                type_cell += f", see [{components_title(base)}]({anchor(components_title(base))})"
            elif is_dataclass_type(inner):
                if inner not in out.entry_users:
                    out.entry_users[inner] = []
                    walk(inner, "", inner.__name__, out, strict, out.entries, owner)
                out.entry_users[inner].append(f"{owner}.{key}" if owner else key)
                type_cell += f", see [{inner.__name__}]({anchor(inner.__name__)})"
        table.rows.append(Row(code(key), type_cell, default_text(default_of(f)), text))
    for sub, key in nested:
        walk(sub, key, key, out, strict, into, owner)
    return table


def component_tables(out: Walk) -> list[tuple[type, list[Table]]]:
    """One table per registered component, bases in the order the config first uses them (the
    registries' own order depends on import order), then any unused ones by name."""
    unused = sorted((b for b in component_kinds() if b not in out.used_by), key=lambda b: b.__name__)
    result = []
    for base in [*out.used_by, *unused]:
        tables: list[Table] = []
        for name, cls in component_kinds()[base].items():
            walk(cls, "", name, out, False, tables, name)  # nested dataclass parameters follow, titled by key
        result.append((base, tables))
    return result


# --- markdown -----------------------------------------------------------------------------------


def table_markdown(table: Table, level: str, key_header: str = "key") -> list[str]:
    lines = [f"{level} {table.title}", ""]
    if table.intro:
        lines += [table.intro, ""]
    if not table.rows:
        return [*lines, "No parameters.", ""]
    lines += [f"| {key_header} | type | default | description |", "|---|---|---|---|"]
    lines += [f"| {r.key} | {cell(r.type)} | {cell(r.default)} | {cell(r.description)} |" for r in table.rows]
    return [*lines, ""]


def render(root: type | None = None) -> str:
    """The reference in markdown; raises :class:`UndocumentedFieldError` when a field has no description."""
    if root is None:
        from fedmtl.config.experiment import ExperimentConfig

        root = ExperimentConfig
    out = Walk()
    walk(root, "", "Top level", out, True, out.sections)
    components = component_tables(out)  # may add entry tables (e.g. a suite's task list)
    if out.missing:
        raise UndocumentedFieldError(out.missing)
    lines = [
        "## Sections",
        "",
        "Keys are YAML key paths (`--set key.path=value` takes the same paths). Defaults are shown as YAML.",
        "",
    ]
    for table in out.sections:
        table.title = table.title if table.title == "Top level" else f"`{table.title}`"
        lines += table_markdown(table, "###")
    if out.entries:
        lines += ["## Entries", "", "Dataclasses used as the entries of a list or mapping.", ""]
        users = {cls.__name__: keys for cls, keys in out.entry_users.items()}
        for entry in out.entries:
            used = f"Entries of {', '.join(code(k) for k in users.get(entry.title, []))}."
            entry.intro = f"{used} {entry.intro}".strip()
            lines += table_markdown(entry, "###")
    lines += [
        "## Components",
        "",
        "A component key takes `{name: <component>, <parameter>: <value>, ...}`, or just the name for the defaults.",
        "",
    ]
    for base, tables in components:
        used = ", ".join(code(k) for k in out.used_by.get(base, [])) or "no config key"
        lines += [f"### {components_title(base)}", "", f"Used by {used}.", ""]
        for table in tables:
            table.title = code(table.title)
            lines += table_markdown(table, "####", key_header="parameter")
    return "\n".join(lines).rstrip() + "\n"


def splice(document: str, reference: str) -> str:
    """``document`` with the text between the markers replaced by ``reference``."""
    if document.count(BEGIN) != 1 or document.count(END) != 1 or document.index(BEGIN) > document.index(END):
        raise ValueError(f"the document needs one {BEGIN!r} line followed by one {END!r} line")
    head, rest = document.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{reference}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update the reference in the document")
    mode.add_argument("--check", action="store_true", help="exit 1 when the document's reference is out of date")
    parser.add_argument("--doc", type=Path, default=DOC, help=f"the document (default {DOC})")
    args = parser.parse_args(argv)
    try:
        reference = render()
    except UndocumentedFieldError as err:
        print(err, file=sys.stderr)
        return 1
    if not (args.write or args.check):
        sys.stdout.write(reference)
        return 0
    document = args.doc.read_text()
    updated = splice(document, reference)
    if args.check:
        if updated != document:
            print(f"{args.doc} is out of date; run: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if updated != document:
        args.doc.write_text(updated)
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
