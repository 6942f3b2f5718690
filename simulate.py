"""Run a federated multi-task experiment in simulation (Flower apps, Ray workers).

    python simulate.py                                  # the default experiment, embedded data
    python simulate.py --config configs/<name>.yaml [--set key.path=value ...]
    python simulate.py --print-config                   # the resolved config with every default
    python simulate.py --resume runs/<run>              # continue an interrupted run (or study) where it stopped
    python simulate.py --config configs/study_digits.yaml   # a study: arms x seeds -> report.md/.html

Installed, the same is the ``fedmtl`` command (:func:`cli`):

    fedmtl run [simulate.py's options]                  # what python simulate.py does
    fedmtl report runs/<study or sweep>                 # re-render a study's or sweep's report from its runs
    fedmtl compare runs/<a> runs/<b> ... [--out DIR]    # finished runs and studies side by side

Bad input ends with one line naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from fedmtl.runtime.offline import set_offline_env

set_offline_env()

from fedmtl.config.experiment import ExperimentConfig  # noqa: E402
from fedmtl.config.loading import load_config  # noqa: E402
from fedmtl.core.errors import ConfigError  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = _Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment config (default: built-in defaults)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override one config value"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    return parser.parse_args(argv)


def quiet_frameworks(verbose: bool) -> None:
    if verbose:
        return
    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def run(cfg: ExperimentConfig, verbose: bool = False, resume_dir: str | None = None) -> int:
    from fedmtl.core.errors import FederationError
    from fedmtl.core.layout import SUMMARY_MD
    from fedmtl.runfiles.checkpoint import load_server_checkpoint
    from fedmtl.runfiles.rundir import RunDirectory
    from fedmtl.runtime.resources import backend_config
    from server.simulation import federate

    if resume_dir:
        run_dir, _ = RunDirectory.open(resume_dir)
        checkpoint = load_server_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError(
                "--resume", f"{run_dir.path} has no checkpoint (checkpoint.every was 0, or no round finished)"
            )
        print(f"fedmtl: resuming {run_dir.path} after round {checkpoint.server_round}", flush=True)
    else:
        backend_config(cfg.resources)  # resource errors before anything is written
        run_dir = RunDirectory.create(cfg)
        print(f"fedmtl: {cfg.name}: {cfg.clients.count} clients, {cfg.rounds} rounds, "
              f"aggregator {cfg.server.aggregator!r} -> {run_dir.path}", flush=True)  # fmt: skip
    quiet_frameworks(verbose)
    try:
        federate(cfg, run_dir, resume=bool(resume_dir), verbose=verbose, echo=lambda line: print(line, flush=True))
    except FederationError as err:
        print(f"error: {err}; files written so far are kept (resume with --resume {run_dir.path})", file=sys.stderr)
        return EXIT_FAILED
    summary = run_dir.path / SUMMARY_MD
    if not summary.exists():
        print(f"error: the simulation ended without a summary; see {run_dir.path}", file=sys.stderr)
        return EXIT_FAILED
    print(summary.read_text().split("\n", 2)[2].rstrip())
    print(f"run directory: {run_dir.path}")
    return EXIT_OK


def run_study(cfg: ExperimentConfig, verbose: bool = False, resume_dir: str | None = None) -> int:
    """A study (``study.arms``) or a sweep (``sweep.grid``): many runs, one report."""
    from fedmtl.config.sections import ResourcesConfig
    from fedmtl.core.errors import FederationError
    from fedmtl.core.layout import REPORT_MD, SWEEP_MD
    from fedmtl.experiments import runner
    from fedmtl.report.report import write_report
    from fedmtl.report.sweep import write_sweep_report
    from fedmtl.runfiles.rundir import RunDirectory
    from fedmtl.runtime.resources import backend_config
    from server.simulation import engine_session, federate
    from server.study_pool import RayRunPool, concurrent_slots, study_pool

    backend_config(cfg.resources)  # resource errors before anything is written
    run_dir = RunDirectory.open(resume_dir)[0] if resume_dir else RunDirectory.create(cfg)
    kind = "sweep" if cfg.sweep.grid else "study"
    print(f"fedmtl: {kind} {cfg.name} -> {run_dir.path}", flush=True)
    quiet_frameworks(verbose)

    concurrent = concurrent_slots(cfg) != 1
    session = study_pool(cfg) if concurrent else engine_session(cfg)  # warm workers or a cluster's CPUs
    with session as held:
        pool = held if isinstance(held, RayRunPool) else None

        def federate_attached(arm_cfg: ExperimentConfig) -> None:
            arm_cfg = replace(arm_cfg, resources=held) if isinstance(held, ResourcesConfig) else arm_cfg
            federate(arm_cfg, RunDirectory.create(arm_cfg), verbose=verbose, echo=lambda line: print(line, flush=True))

        try:
            if cfg.sweep.grid:
                runner.run_sweep(cfg, run_dir.path, federate_attached, on_study_done=write_report, pool=pool)
                write_sweep_report(run_dir.path)
                report = run_dir.path / SWEEP_MD
            else:
                runner.run_study(cfg, run_dir.path, federate_attached, on_done=write_report, pool=pool)
                report = run_dir.path / REPORT_MD
        except FederationError as err:
            print(f"error: {err}; finished runs are kept (continue with --resume {run_dir.path})", file=sys.stderr)
            return EXIT_FAILED
    print(f"report: {report}")
    return EXIT_OK


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    try:
        if args.resume:
            if args.config or args.set:
                raise ConfigError(
                    "--resume", "takes its config from the run directory; do not combine it with --config or --set"
                )
            from fedmtl.runfiles.rundir import RunDirectory

            _, cfg = RunDirectory.open(args.resume)
            runner = run_study if cfg.study.arms else run
            return runner(cfg, args.verbose, resume_dir=args.resume)
        cfg = load_config(args.config, args.set)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return EXIT_OK
        return (run_study if cfg.study.arms else run)(cfg, args.verbose)
    except ConfigError as err:
        print(f"error: config {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; files written so far are kept", file=sys.stderr)
        # Flower's server thread may still wait for replies that will never come: end the process
        # now (files are appended with fsync or replaced atomically, so nothing is half-written)
        from server.simulation import shutdown_ray

        shutdown_ray()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def report(directory: str) -> int:
    """Re-render the report of a finished (or partly finished) study or sweep, without running anything:
    of a sweep, every point's study report and then the sweep's."""
    from fedmtl.core.layout import REPORT_MD, STUDY_FILE, SWEEP_FILE, SWEEP_MD
    from fedmtl.report.collect import StudyError
    from fedmtl.report.report import write_report
    from fedmtl.report.sweep import load_sweep, write_sweep_report

    path = Path(directory)
    try:
        if (path / SWEEP_FILE).is_file():
            for point in load_sweep(path).points:
                if (point.study_dir / STUDY_FILE).is_file():
                    write_report(point.study_dir)
            write_sweep_report(path)
            print(f"report: {path / SWEEP_MD}")
        elif (path / STUDY_FILE).is_file():
            write_report(path)
            print(f"report: {path / REPORT_MD}")
        else:
            print(
                f"error: {path} holds no {STUDY_FILE} or {SWEEP_FILE} (not a study or sweep directory)", file=sys.stderr
            )
            return EXIT_BAD_INPUT
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def report_command(args: list[str]) -> int:
    if len(args) != 1 or args[0].startswith("-"):
        print("error: usage: fedmtl report DIR", file=sys.stderr)
        return EXIT_BAD_INPUT
    return report(args[0])


def compare_command(args: list[str]) -> int:
    """``fedmtl compare DIR DIR ... [--out OUT]``: finished runs and studies side by side."""
    import time

    parser = _Parser(prog="fedmtl compare", description="put finished runs and studies side by side")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories and/or study directories")
    parser.add_argument("--out", help="where compare.md/.html go (default: runs/compare-<timestamp>)")
    parsed = parser.parse_args(args)
    from fedmtl.core.layout import COMPARE_MD
    from fedmtl.report.collect import StudyError
    from fedmtl.report.compare import write_comparison

    out = Path(parsed.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        table = write_comparison(parsed.dirs, out)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(table, end="")
    print(f"comparison: {out / COMPARE_MD}")
    return EXIT_OK


COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "run": (
        "run an experiment, study or sweep (python simulate.py's options; fedmtl run --help)",
        lambda args: main(args, prog="fedmtl run"),
    ),
    "report": ("re-render a study's or sweep's report from its run files: fedmtl report DIR", report_command),
    "compare": ("finished runs and studies side by side: fedmtl compare DIR DIR ... [--out OUT]", compare_command),
}


def cli(argv: list[str] | None = None) -> int:
    """``fedmtl <command> ...``: the installed command line."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        listing = "\n".join(f"  {name:<8}{what}" for name, (what, _) in COMMANDS.items())
        print(f"usage: fedmtl {{{','.join(COMMANDS)}}} ...\n{listing}")
        return EXIT_OK if argv else EXIT_BAD_INPUT
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return COMMANDS[argv[0]][1](argv[1:])


def console_script() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    sys.exit(main())
