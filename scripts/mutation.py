"""Mutation testing of fedmtl's numerical core with mutmut, and its report.

    .venv/bin/pip install -e ".[test,mutation]"
    .venv/bin/python scripts/mutation.py --run      # mutate and test (several hours on 2 cores), then report
    .venv/bin/python scripts/mutation.py --resume   # go on with an interrupted run (mutants/ kept)
    .venv/bin/python scripts/mutation.py --recheck  # check the unexplained survivors again after adding tests
    .venv/bin/python scripts/mutation.py            # report the last run (mutants/) again

What is mutated, and against which tests, is ``[tool.mutmut]`` in ``pyproject.toml``. Each mutant is
one small change to the code (an operator, a constant, a comparison, a dropped argument); a test
that fails on it *kills* it. The report is the ``mutation`` section of docs/TESTING.md: the score
per module and per group (killed and timed-out mutants over all mutants that are not explained as
equivalent), every surviving mutant with its diff, and for each survivor either the reason it is
equivalent (``tests/mutation_equivalents/*.yaml``: the mutated code behaves the same on every input
the code can receive) or "not explained". An explanation names the mutant's key and its changed line
(``change``); when the code moves and mutmut numbers its mutants differently, an explanation whose
line is no longer the mutant's is reported as out of date and does not count. The goals (issue #27): 90 % on the methods and the
statistics, 80 % on the server update and the round rules.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents"  # one YAML file per area
TESTING_MD = ROOT / "docs" / "TESTING.md"
TIMING = MUTANTS / "fedmtl-mutation-timing.json"
BEGIN, END = "<!-- mutation report: begin -->", "<!-- mutation report: end -->"

# mutmut's exit codes per mutant (mutmut/stats.py)
KILLED, SURVIVED, TIMEOUT, NO_TESTS = "killed", "survived", "timeout", "no tests"
NOT_CHECKED = "not checked"  # an interrupted run's mutants not reached yet: left out of the score
STATUS = {1: KILLED, 3: KILLED, 0: SURVIVED, 5: NO_TESTS, 33: NO_TESTS, 36: TIMEOUT, 24: TIMEOUT, -24: TIMEOUT}
STATUS |= {152: TIMEOUT, 255: TIMEOUT, 37: KILLED}  # 37: caught by a type check

GROUPS = {  # group -> (module prefixes, goal)
    "methods": (("fedmtl.methods.",), 0.90),
    "statistics": (("fedmtl.report.deltas", "fedmtl.report.analysis"), 0.90),
    "server update": (("fedmtl.federation.server_update",), 0.80),
    "round rules": (
        (
            "fedmtl.data.participants",
            "fedmtl.federation.algorithm",
            "fedmtl.federation.cohort",
            "fedmtl.federation.sampling",
            "fedmtl.federation.screening",
            "fedmtl.driver.loop",
            "fedmtl.driver.schedule",
            "fedmtl.driver.checkpointing",
        ),
        0.80,
    ),
}
_MUTANT = re.compile(r"^(?P<module>.+?)\.(?:x_|xǁ)(?P<rest>.+)__mutmut_\d+$")


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    equivalent: int = 0

    @property
    def detected(self) -> int:
        return self.counts[KILLED] + self.counts[TIMEOUT]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def score(self) -> float:
        counted = self.total - self.equivalent - self.counts[NOT_CHECKED]
        return self.detected / counted if counted else float("nan")

    @property
    def shown(self) -> str:
        return "–" if self.score != self.score else f"{self.score:.1%}"  # NaN: nothing checked yet


def module_of(key: str) -> str:
    match = _MUTANT.match(key)
    return match.group("module") if match else key.rsplit(".", 1)[0]


def group_of(module: str) -> str | None:
    for group, (prefixes, _) in GROUPS.items():
        if module.startswith(prefixes):
            return group
    return None


def read_results() -> dict[str, str]:
    """mutant key -> status, from mutmut's per-file ``.meta`` records."""
    results = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            results[key] = NOT_CHECKED if code is None else STATUS.get(code, "suspicious")
    return results


def diff_of(key: str) -> str:
    """The mutant's changed lines (``mutmut show``'s diff, read in this process: one subprocess per
    survivor took minutes)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # mutmut 3.8.1, pinned in pyproject.toml

    shown = get_diff_for_mutant(key)
    lines = [line for line in shown.splitlines() if line[:1] in "+-" and not line.startswith(("---", "+++"))]
    return "\n".join(lines)


def run_mutmut(max_children: int, names: list[str] | None = None) -> float:
    """Run (or go on with) mutmut; returns the seconds of all its runs on this mutants/ so far.

    mutmut keeps each mutant's result in mutants/ and checks only the mutants without one (or whose
    function changed), so an interrupted run goes on where it stopped.
    """
    started = time.perf_counter()
    MUTANTS.mkdir(exist_ok=True)
    before = json.loads(TIMING.read_text())["seconds"] if TIMING.is_file() else 0.0
    log = MUTANTS / "fedmtl-mutmut-run.log"
    with log.open("a") as out:
        command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *(names or [])]
        code = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = before + time.perf_counter() - started
    TIMING.write_text(json.dumps({"seconds": seconds, "max_children": max_children}))
    if code != 0:
        raise SystemExit(f"mutmut run failed or was stopped (exit {code}); see {log}")
    return seconds


def load_equivalents() -> dict[str, dict[str, str]]:
    """mutant key -> {"change": the mutant's changed line, "because": why it behaves the same}."""
    merged: dict[str, dict[str, str]] = {}
    for path in sorted(EQUIVALENTS.glob("*.yaml")) if EQUIVALENTS.is_dir() else ():
        for key, entry in (yaml.safe_load(path.read_text()) or {}).items():
            if not isinstance(entry, dict) or set(entry) != {"change", "because"}:
                raise SystemExit(f"{path}: {key}: needs exactly 'change' (the mutated line) and 'because'")
            merged[key] = entry
    return merged


def added_line(diff: str) -> str:
    """The mutant's changed line(s): the diff's added lines, stripped and joined."""
    return " ".join(line[1:].strip() for line in diff.splitlines() if line.startswith("+"))


def explains(explanation: dict[str, str], diff: str) -> bool:
    """Whether an explanation is still the mutant's: its ``change`` is the diff's changed line (mutmut
    numbers mutants anew when the code moves)."""
    return explanation["change"].strip() == added_line(diff)


def report(results: dict[str, str], explanations: dict[str, dict[str, str]]) -> str:
    by_module: dict[str, Tally] = defaultdict(Tally)
    by_group: dict[str, Tally] = defaultdict(Tally)
    survivors = sorted(key for key, status in results.items() if status not in (KILLED, TIMEOUT, NOT_CHECKED))
    diffs = {key: diff_of(key) for key in survivors}
    outdated = sorted(key for key in survivors if key in explanations and not explains(explanations[key], diffs[key]))
    equivalents = {key: entry["because"] for key, entry in explanations.items() if key not in outdated}
    for key, status in results.items():
        module = module_of(key)
        for tally in (by_module[module], by_group[group_of(module) or "other"]):
            tally.counts[status] += 1
            tally.equivalent += key in equivalents and status not in (KILLED, TIMEOUT, NOT_CHECKED)
    timing = json.loads(TIMING.read_text()) if TIMING.is_file() else None
    unchecked = sum(status == NOT_CHECKED for status in results.values())
    lines = [
        f"Measured by `scripts/mutation.py --run` (mutmut 3.8.1, `[tool.mutmut]` in pyproject.toml): "
        f"{len(results)} mutants"
        + (
            f", {timing['seconds'] / 60:.0f} min of mutmut recorded with {timing['max_children']} workers on this "
            "2-core machine (a run stopped before it ended, e.g. with a session, is not counted)"
            if timing
            else ""
        )
        + ". Score = (killed + timed out) / (mutants checked - equivalent survivors)."
        + (f" **Incomplete: {unchecked} mutants not checked yet** (`--resume` goes on)." if unchecked else ""),
        "",
        "| group | goal | mutants | not checked | killed | timed out | survived | equivalent | no tests | score |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group, (_, goal) in GROUPS.items():
        t = by_group[group]
        lines.append(
            f"| {group} | {goal:.0%} | {t.total} | {t.counts[NOT_CHECKED]} | {t.counts[KILLED]} | {t.counts[TIMEOUT]} | {t.counts[SURVIVED]} | "
            f"{t.equivalent} | {t.counts[NO_TESTS]} | **{t.shown}** |"
        )
    lines += ["", "| module | mutants | not checked | survived | equivalent | score |", "|---|---|---|---|---|---|"]
    for module, t in sorted(by_module.items()):
        missed = t.total - t.detected - t.counts[NOT_CHECKED]
        lines.append(f"| `{module}` | {t.total} | {t.counts[NOT_CHECKED]} | {missed} | {t.equivalent} | {t.shown} |")
    lines += ["", f"### Surviving mutants ({len(survivors)})", ""]
    for key in survivors:
        reason = equivalents.get(key, "**not explained**")
        lines += [f"- `{key}` ({results[key]}): {reason}", "", "  ```diff"]
        lines += [f"  {line}" for line in diffs[key].splitlines()] + ["  ```", ""]
    if outdated:
        lines += ["Explanations whose `change` is no longer the mutant's (mutants renumbered; not counted):", ""]
        lines += [f"- `{key}`" for key in outdated] + [""]
    stale = sorted(set(explanations) - set(survivors))
    if stale:
        lines += ["Explanations for mutants that no longer survive (remove them from the file):", ""]
        lines += [f"- `{key}`" for key in stale]
    return "\n".join(lines).rstrip() + "\n"


def write_section(text: str) -> None:
    document = TESTING_MD.read_text()
    if document.count(BEGIN) != 1 or document.count(END) != 1:
        raise SystemExit(f"{TESTING_MD} needs one {BEGIN!r} and one {END!r} line")
    head, rest = document.split(BEGIN)
    _, tail = rest.split(END)
    TESTING_MD.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run mutmut first (from scratch: mutants/ is replaced)")
    parser.add_argument(
        "--resume", action="store_true", help="run mutmut on the mutants not checked yet (mutants/ kept)"
    )
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="check the surviving mutants again (after adding tests; mutmut keeps results)",
    )
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant runs (default 2)")
    args = parser.parse_args()
    os.chdir(ROOT)  # mutmut reads mutants/ relative to the working directory
    if args.run:
        subprocess.run(["rm", "-rf", str(MUTANTS)], check=True)
    if args.run or args.resume:
        seconds = run_mutmut(args.max_children)
        print(f"mutmut ran for {seconds / 60:.1f} min")
    if args.recheck:
        explanations = load_equivalents()
        survivors = [  # an explained survivor survives again by definition: only the others are rerun
            key
            for key, status in read_results().items()
            if status == SURVIVED and not (key in explanations and explains(explanations[key], diff_of(key)))
        ]
        seconds = run_mutmut(args.max_children, survivors)
        print(f"{len(survivors)} unexplained survivors checked again; mutmut ran for {seconds / 60:.1f} min in all")
    if not MUTANTS.is_dir():
        print("error: no mutants/ directory: run with --run first", file=sys.stderr)
        return 2
    text = report(read_results(), load_equivalents())
    write_section(text)
    print(text.split("### Surviving")[0])
    print(f"written to {TESTING_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
