"""The direct engine's Ray workers: one :class:`ClientWorker` actor per slot the Ray cluster fits, each
running any node's messages through the loaded ClientApp; dead ones are replaced. The pool outlives a
run: within :func:`warm_workers`, every run of a study or sweep reuses the same actors (torch imported,
data caches kept)."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import ray
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

# Creating the first torch optimizer in a process imports torch._dynamo (about 1.8 s on a 2-core
# machine). Imported in a background thread, it overlaps Ray's start (driver) and the round-0
# evaluation (workers) instead of delaying the first round.
SLOW_LAZY_IMPORTS = ("torch._dynamo",)


def import_in_background(modules: Iterable[str] = SLOW_LAZY_IMPORTS) -> None:
    threading.Thread(
        target=lambda: [importlib.import_module(m) for m in modules], name="fedmtl-warm-imports", daemon=True
    ).start()


@ray.remote
class ClientWorker:
    """One simulated-client process: runs any node's messages through the loaded ``ClientApp``."""

    def __init__(self) -> None:
        import torch  # noqa: F401 - paid once per worker, not per run

        import fedmtl.local.client  # noqa: F401

        self.app: tuple[str, ClientApp] | None = None  # (key, app) of the current run
        self.handled = 0  # messages run, over every run of the pool

    def ready(self) -> int:
        return os.getpid()

    def placement(self) -> tuple[str, int]:
        """The Ray node this worker runs on, and how many messages it has run."""
        return ray.get_runtime_context().get_node_id(), self.handled

    def load(self, key: str, app: ClientApp) -> None:
        """The current run's app (a message still running from an earlier run keeps its own)."""
        self.app = (key, app)

    def handle(self, key: str, batch: list[tuple[Message, Context]]) -> list[tuple[Message | str, Context | None]]:
        """Each ``(message, context)`` through the ClientApp, in order: ``(reply, context)``, or, where the
        ClientApp raised, ``("<error type>: <error>", None)`` (the context as it was before, kept by the
        caller) while the rest of the batch goes on."""
        if self.app is None or self.app[0] != key:
            raise RuntimeError(f"no client app loaded for run {key}")
        results: list[tuple[Message | str, Context | None]] = []
        for message, context in batch:
            self.handled += 1
            try:
                results.append((self.app[1](message, context), context))
            except Exception as error:  # noqa: BLE001 - one client's error is its own reply, not the batch's
                results.append((f"{type(error).__name__}: {error}", None))
        return results


def actors_that_fit(nodes: Iterable[Mapping[str, Any]], client_resources: Mapping[str, float]) -> int:
    """How many actors reserving ``client_resources`` fit on the Ray cluster's ``nodes`` (``ray.nodes()``),
    node by node: as ``flwr.simulation``'s ``pool_size_from_resources`` counts them, without importing
    Flower's simulation package (its link state and SQL store), which took about 1 s of every start, in
    the driver and in each worker. Raises ``ValueError`` when none fits."""
    total = 0
    for node in nodes:
        resources = node["Resources"]
        if not resources:  # a node that left stays listed, without resources
            continue
        fit = int(resources.get("CPU", 0) / client_resources["num_cpus"])
        if client_resources.get("num_gpus", 0) > 0:
            gpus = resources.get("GPU", 0)
            fit = min(fit, int(gpus / client_resources["num_gpus"])) if gpus else 0
        total += fit
    if total == 0:
        raise ValueError(f"no Ray node fits a client worker reserving {dict(client_resources)}; lower the resources")
    return total


@dataclass(frozen=True)
class PoolSpec:
    """What a pool is built for: how Ray is initialised and what each actor reserves."""

    init_args: tuple[tuple[str, Any], ...]
    client_resources: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, backend: Mapping[str, Any]) -> PoolSpec:
        return cls(tuple(sorted(backend["init_args"].items())), tuple(sorted(backend["client_resources"].items())))


class WorkerPool:
    """As many :class:`ClientWorker` actors as the Ray cluster fits; dead ones are replaced."""

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        if not ray.is_initialized():
            start_ray(dict(spec.init_args))
        self.resources = dict(spec.client_resources)
        self.actors = [self._new_actor() for _ in range(actors_that_fit(ray.nodes(), self.resources))]
        self.app: tuple[str, ClientApp] | None = None  # (key, app) of the current run, for replacements

    def _new_actor(self) -> Any:
        return ClientWorker.options(**self.resources).remote()  # type: ignore[attr-defined]

    def wait_ready(self) -> list[int]:
        """Block until every actor has started (torch imported); their process ids."""
        return ray.get([actor.ready.remote() for actor in self.actors])

    def load(self, app: ClientApp) -> str:
        """Send ``app`` to every actor once; messages then name it by the returned key."""
        key = uuid.uuid4().hex
        self.app = (key, app)
        for actor in self.actors:
            actor.load.remote(key, app)  # ordered before any later call from this driver
        return key

    def replace(self, dead: Any) -> None:
        """A fresh actor (with the current app) in place of ``dead``, which is killed if still there
        (once: every message that was queued on it fails alike)."""
        if dead not in self.actors:
            return
        ray.kill(dead)
        fresh = self._new_actor()
        self.actors[self.actors.index(dead)] = fresh
        if self.app is not None:
            fresh.load.remote(*self.app)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def start_ray(init_args: dict[str, Any]) -> None:
    """``ray.init`` with this process's ``sys.path`` visible to the workers. A local Ray's workers
    inherit the environment (no ``runtime_env``, so Ray's prestarted idle workers can serve the
    actors); workers of an existing cluster get it through the job's ``runtime_env``."""
    pythonpath = os.pathsep.join(dict.fromkeys([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])]))
    if init_args.get("address") != "local":
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
        return
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = pythonpath
    try:
        ray.init(**init_args)
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous


_warm: WorkerPool | None = None


def worker_pool(backend: Mapping[str, Any]) -> WorkerPool:
    """The warm pool if it was built for the same resources, else a new one (the old one shut down)."""
    global _warm
    import_in_background()  # the server's optimizer needs it; overlaps Ray's start
    spec = PoolSpec.of(backend)
    if _warm is not None and (_warm.spec != spec or not ray.is_initialized()):
        shutdown()
    if _warm is None:
        _warm = WorkerPool(spec)
    return _warm


def warm_pool() -> WorkerPool | None:
    """The pool kept warm for a study or sweep (:func:`warm_workers`), if one is up."""
    return _warm


def shutdown() -> None:
    """Stop the warm pool's actors and this process's Ray connection (a local Ray stops with it)."""
    global _warm
    if _warm is not None and ray.is_initialized():
        _warm.shutdown()
    _warm = None
    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def warm_workers() -> Iterator[None]:
    """Keep the worker pool (and Ray) alive across every run started inside the block; stop it after."""
    global _keep_warm
    _keep_warm, previous = True, _keep_warm
    try:
        yield
    finally:
        _keep_warm = previous
        if not previous:
            shutdown()


_keep_warm = False


def keeping_warm() -> bool:
    return _keep_warm
