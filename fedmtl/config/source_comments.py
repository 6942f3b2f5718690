"""What the source of a config class says: its docstring and each field's comments (the comment block
above the field and the comment on its line), read with ``ast`` and ``tokenize``. The configuration
reference (:mod:`fedmtl.config.reference`) is generated from them."""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_TOOL_COMMENTS = ("type:", "noqa", "pragma", "fmt:")  # trailing comments for tools, not for readers


@dataclass(frozen=True)
class ClassSource:
    """What the source of one class says: its docstring and each annotated attribute's comments."""

    docstring: str | None
    comments: Mapping[str, str]  # attribute -> description (comment block above + comment on its line)
    lines: Mapping[str, str]  # attribute -> "file:line", for error messages


@cache
def class_source(cls: type) -> ClassSource:
    lines, start = inspect.getsourcelines(cls)
    text = textwrap.dedent("".join(lines))
    node = ast.parse(text).body[0]
    if not isinstance(node, ast.ClassDef):
        raise TypeError(f"source of {cls.__qualname__} is not a class definition")
    standalone: dict[int, str] = {}  # line -> text of a comment that fills its line
    trailing: dict[int, str] = {}  # line -> text of a comment after code
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            comment = token.string.lstrip("#").strip()
            if token.line[:col].strip():
                trailing[row] = comment
            else:
                standalone[row] = comment
    comments: dict[str, str] = {}
    where: dict[str, str] = {}
    file = _relative(inspect.getsourcefile(cls) or "?")
    for statement in node.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        name = statement.target.id
        block: list[str] = []
        row = statement.lineno - 1
        while row in standalone:
            block.insert(0, standalone[row])
            row -= 1
        end = statement.end_lineno or statement.lineno
        after = [trailing[r] for r in range(statement.lineno, end + 1) if r in trailing]
        parts = [c for c in block + after if c and not c.startswith(_TOOL_COMMENTS)]
        comments[name] = " ".join(parts)
        where[name] = f"{file}:{start + statement.lineno - 1}"
    return ClassSource(ast.get_docstring(node), comments, where)


def _relative(file: str) -> str:
    path = Path(file).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def description(cls: type, name: str) -> tuple[str, str]:
    """The comment describing field ``name`` of dataclass ``cls`` (searching its bases), and where it is."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            source = class_source(klass)
            return source.comments.get(name, ""), source.lines.get(name, "?")
    return "", "?"
