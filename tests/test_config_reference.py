"""The generated configuration reference: current in docs/CONFIGURATION.md, complete, and strict."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

import pytest

from fedmtl.config import reference
from fedmtl.config.experiment import ExperimentConfig
from fedmtl.core.registry import component_kinds


@pytest.fixture(scope="module")
def text() -> str:
    return reference.render()


def test_reference_in_the_doc_is_current(text: str) -> None:
    document = reference.DOC.read_text()
    assert reference.splice(document, text) == document, (
        f"{reference.DOC.name} is out of date; regenerate it with: {reference.COMMAND}"
    )


def section_keys(cls: type, prefix: str = "") -> Iterator[str]:
    """Every key path of ``cls``, walked independently of the generator."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp not in component_kinds():
            yield from section_keys(tp, key)
        else:
            yield key


def test_every_section_field_has_a_row(text: str) -> None:
    keys = list(section_keys(ExperimentConfig))
    assert {"name", "clients.count", "server.optimizer.lr", "faults.client_nan_rate", "sweep.grid"} <= set(keys)
    missing = [key for key in keys if f"| `{key}` |" not in text]
    assert not missing, f"section keys without a row in the reference: {missing}"


def component_block(text: str, base: type, name: str) -> str:
    """The markdown from the component's heading to the next heading of the same or a higher level."""
    components = text.split(f"### {reference.components_title(base)}\n", 1)[1]
    match = re.search(rf"^#### `{re.escape(name)}`\n(.*?)(?=^#{{1,4}} )", components + "\n#### ", re.S | re.M)
    assert match, f"no section for {base.__name__} component {name!r}"
    return match.group(1)


def test_every_registered_component_and_parameter_appears(text: str) -> None:
    assert len(component_kinds()) >= 5  # suites, aggregators, balancers, sharing, task sampling
    for base, registry in component_kinds().items():
        assert f"### {reference.components_title(base)}\n" in text
        for name, cls in registry.items():
            block = component_block(text, base, name)
            params = [f.name for f in dataclasses.fields(cls) if f.init]
            missing = [p for p in params if f"| `{p}` |" not in block]
            assert not missing, f"{base.__name__} {name!r}: parameters missing from the reference: {missing}"
            if not params:
                assert "No parameters." in block


def test_component_rows_show_defaults_and_summary(text: str) -> None:
    cagrad = component_block(text, _base_of("cagrad"), "cagrad")
    assert cagrad.startswith("\nCAGrad (Liu, Liu, Jin, Stone, Liu; NeurIPS 2021)")
    assert "| `c` | `float` | `0.4` |" in cagrad
    assert (
        "| `server.aggregator` | `Aggregator`, see [Aggregator components](#aggregator-components) | `fedavg` |" in text
    )
    assert "| `client.surgery` | `Aggregator \\| None`" in text


def _base_of(name: str) -> type:
    return next(base for base, registry in component_kinds().items() if name in registry)


@dataclass(frozen=True)
class Documented:
    """A section whose fields are documented in each supported way."""

    # A block above the field,
    # over two lines.
    above: int = 1
    beside: str = "x"  # a comment on the field's line
    # Above and
    both: float = 0.5  # beside, joined.
    counts: tuple[int, ...] = field(default_factory=tuple)  # type: ignore[assignment]  # tool comments dropped


@dataclass(frozen=True)
class Undocumented:
    documented: int = 0  # fine

    bare: int = 1
    # a comment separated from the field by a blank line describes nothing

    also_bare: bool = False


@dataclass(frozen=True)
class Root:
    ok: Documented = field(default_factory=Documented)
    bad: Undocumented = field(default_factory=Undocumented)


def test_descriptions_come_from_the_comments() -> None:
    assert reference.description(Documented, "above")[0] == "A block above the field, over two lines."
    assert reference.description(Documented, "beside")[0] == "a comment on the field's line"
    assert reference.description(Documented, "both")[0] == "Above and beside, joined."
    assert reference.description(Documented, "counts")[0] == ""


def test_a_field_without_a_description_fails_the_generator() -> None:
    with pytest.raises(reference.UndocumentedFieldError) as err:
        reference.render(Root)
    assert [m.split(" ")[0] for m in err.value.missing] == ["ok.counts", "bad.bare", "bad.also_bare"]
    assert "Undocumented.bare" in str(err.value) and "test_config_reference.py:" in str(err.value)


def test_check_and_write_modes(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "CONFIGURATION.md"
    doc.write_text(f"# Title\n\nprose\n\n{reference.BEGIN}\nstale\n{reference.END}\n\nmore prose\n")
    assert reference.main(["--check", "--doc", str(doc)]) == 1
    assert reference.COMMAND in capsys.readouterr().err
    assert reference.main(["--write", "--doc", str(doc)]) == 0
    assert doc.read_text() == f"# Title\n\nprose\n\n{reference.BEGIN}\n{text}{reference.END}\n\nmore prose\n"
    assert reference.main(["--check", "--doc", str(doc)]) == 0
