"""Run a federated multi-task experiment on Flower's simulation engine (Ray backend).

    python simulate.py                                  # the default experiment, embedded data
    python simulate.py --config configs/<name>.yaml [--set key.path=value ...]
    python simulate.py --print-config                   # the resolved config with every default
    python simulate.py --resume runs/<run>              # continue an interrupted run from its last checkpoint

Bad input ends with one line naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from fedmtl.offline import set_offline_env

set_offline_env()

from fedmtl.config import ExperimentConfig, load_config  # noqa: E402
from fedmtl.errors import ConfigError  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment config (default: built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override one config value")
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
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from fedmtl.checkpoint import CLIENT_STATE_DIR, load_server_checkpoint
    from fedmtl.resources import backend_config
    from fedmtl.rundir import SUMMARY_MD, RunDirectory
    from server.loop import FederationError, WorkerPoolDied
    from server.server_app import make_server_app

    backend = backend_config(cfg.resources)
    if resume_dir:
        run_dir, _ = RunDirectory.open(resume_dir)
        checkpoint = load_server_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError("--resume", f"{run_dir.path} has no checkpoint (checkpoint.every was 0, or no round finished)")
        print(f"fedmtl: resuming {run_dir.path} after round {checkpoint.server_round}", flush=True)
    else:
        run_dir = RunDirectory.create(cfg)
        print(f"fedmtl: {cfg.name}: {cfg.clients.count} clients, {cfg.rounds} rounds, "
              f"aggregator {cfg.server.aggregator!r} -> {run_dir.path}", flush=True)  # fmt: skip
    quiet_frameworks(verbose)
    client_state_dir = str((run_dir.path / CLIENT_STATE_DIR).resolve())
    attempt = 0
    while True:
        try:
            run_simulation(
                server_app=make_server_app(cfg, run_dir, bool(resume_dir) or attempt > 0, attempt, client_state_dir),
                client_app=make_client_app(cfg),
                num_supernodes=cfg.clients.count,
                backend_config=backend,
                verbose_logging=verbose,
            )
            break
        except WorkerPoolDied as died:
            shutdown_ray()
            if attempt >= cfg.checkpoint.restarts:
                print(f"error: {died}; gave up after {attempt} restarts (checkpoint.restarts); resume with --resume {run_dir.path}", file=sys.stderr)
                return EXIT_FAILED
            attempt += 1
            print(f"fedmtl: {died}; restarting from the last checkpoint (restart {attempt} of {cfg.checkpoint.restarts})", flush=True)
        except FederationError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            shutdown_ray()
    summary = run_dir.path / SUMMARY_MD
    if not summary.exists():
        print(f"error: the simulation ended without a summary; see {run_dir.path}", file=sys.stderr)
        return EXIT_FAILED
    print(summary.read_text().split("\n", 2)[2].rstrip())
    print(f"run directory: {run_dir.path}")
    return EXIT_OK


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.resume:
            if args.config or args.set:
                raise ConfigError("--resume", "takes its config from the run directory; do not combine it with --config or --set")
            from fedmtl.rundir import RunDirectory

            _, cfg = RunDirectory.open(args.resume)
            return run(cfg, args.verbose, resume_dir=args.resume)
        cfg = load_config(args.config, args.set)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return EXIT_OK
        return run(cfg, args.verbose)
    except ConfigError as err:
        print(f"error: config {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; files written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
