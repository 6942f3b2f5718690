"""Registries: one explicit object per kind of component (aggregator, balancer, suite, encoder, ...).

A component kind is an abstract base class deriving from :class:`Component` whose ``REGISTRY`` maps
YAML names to its implementations (``server.aggregator: {name: cagrad, c: 0.4}`` builds
``REGISTRY["cagrad"](c=0.4)``). A registry names the modules that fill it and imports them on its
first lookup, so a lookup never depends on which module happened to be imported first.
"""

from __future__ import annotations

import importlib
from abc import ABC
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar, Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, type[T]], Generic[T]):
    """``name -> class`` for one kind of component; a read-only mapping once filled."""

    def __init__(self, kind: str, modules: Sequence[str] = ()) -> None:
        """``kind``: what the members are, for messages (``aggregator``); ``modules``: where they register."""
        self.kind = kind
        self._modules = tuple(modules)
        self._members: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, cls: type[T]) -> type[T]:
        """Add ``cls`` under its ``name`` (usable as a class decorator); a second class may not take a name."""
        name = cls.name  # type: ignore[attr-defined]  # members declare a ClassVar name
        if self._members.get(name, cls) is not cls:
            raise ValueError(f"{self.kind} name {name!r} is taken by {self._members[name].__name__}")
        self._members[name] = cls
        return cls

    def _load(self) -> dict[str, type[T]]:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)
        return self._members

    def __getitem__(self, name: str) -> type[T]:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(sorted(self._load()))})"


class Component(ABC):  # noqa: B024 - a marker base: its subclasses declare the abstract methods
    """Base of every configurable component kind: ``name`` (YAML) and the kind's ``REGISTRY``."""

    name: ClassVar[str]
    REGISTRY: ClassVar[Registry]


def component_kinds() -> dict[type[Component], Registry]:
    """Every component kind defined so far (a :class:`Component` subclass declaring its own ``REGISTRY``)
    with its registry, in definition order."""
    kinds: dict[type[Component], Registry] = {}
    stack = list(reversed(Component.__subclasses__()))
    while stack:
        cls = stack.pop()
        if "REGISTRY" in cls.__dict__:
            kinds[cls] = cls.REGISTRY
        stack.extend(reversed(cls.__subclasses__()))
    return kinds
