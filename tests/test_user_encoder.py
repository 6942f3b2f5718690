"""The user's own encoder (``model.encoder: {name: module, path: pkg.mod:Name, kwargs: {...}}``): built
from its import path with its keyword arguments, its declared blocks the unit of partial sharing, run
end to end in a federation with private heads (in process, and through simulate.py with Ray workers
that import it from PYTHONPATH); bad paths and modules without blocks refused with the key path."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.model.networks import initial_shared_state
from tests.helpers import TINY_OVERRIDES, set_args, simulate, tiny_overrides
from tests.loopback import run_in_process

USER_MODULE = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Residual(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.linear = nn.Linear(width, width)

        def forward(self, h):
            return h + torch.tanh(self.linear(h))


    class Encoder(nn.Module):
        """A stem, ``depth`` residual blocks and a projection: ``depth + 2`` blocks."""

        def __init__(self, input_dim, representation_dim, image_shape, width=8, depth=1):
            super().__init__()
            blocks = [nn.Sequential(nn.Linear(input_dim, width), nn.ReLU())]
            blocks += [Residual(width) for _ in range(depth)]
            blocks.append(nn.Sequential(nn.Linear(width, representation_dim), nn.ReLU()))
            self.blocks = nn.ModuleList(blocks)


    class Broken(nn.Module):
        def __init__(self, input_dim, representation_dim, image_shape):
            super().__init__()
            raise TypeError("a bug inside the user's code")


    class NoBlocks(nn.Module):
        def __init__(self, input_dim, representation_dim, image_shape):
            super().__init__()
            self.layers = nn.Linear(input_dim, representation_dim)
    '''
)


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """``user_models.py`` on sys.path (and PYTHONPATH, for the processes a test starts)."""
    root = tmp_path / "user_code"
    root.mkdir()
    (root / "user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    yield root
    sys.modules.pop("user_models", None)


ENCODER = "model.encoder={name: module, path: 'user_models:Encoder', kwargs: {width: 6, depth: 2}}"


def test_the_module_is_built_with_its_kwargs_and_its_blocks_are_the_encoder(user_package):
    cfg = load_config(None, [*TINY_OVERRIDES, ENCODER])
    state = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed)
    blocks = sorted({key.split(".")[1] for key in state})
    assert blocks == ["0", "1", "2", "3"]  # stem, two residual blocks, projection
    assert state["encoder.1.linear.weight"].shape == (6, 6)
    assert state["encoder.3.0.weight"].shape == (cfg.model.representation_dim, 6)
    assert cfg.model.num_encoder_blocks(cfg.data.feature_dim(), None) == 4


def test_a_federation_trains_the_users_encoder_with_partial_sharing(user_package, tmp_path):
    run_dir = run_in_process(
        tmp_path, "run", *tiny_overrides(3), "rounds=2", ENCODER, "model.sharing={name: partial, shared_blocks: 2}"
    )
    encoder = torch.load(run_dir / "encoder.pt")
    assert sorted({k.split(".")[1] for k in encoder}) == ["0", "1"]  # blocks 2 and 3 stay on the clients
    assert not any(k.startswith("heads.") for k in encoder)
    initial = initial_shared_state(load_config(None, [*TINY_OVERRIDES, ENCODER]).model, 4, 0)
    assert any(not torch.equal(encoder[k], initial[k]) for k in encoder)  # it trained


@pytest.mark.slow
def test_simulate_runs_the_users_encoder_on_ray_workers(user_package, tmp_path, simulate_env):
    env = {**simulate_env, "PYTHONPATH": str(user_package)}
    run_dir = tmp_path / "run"
    result = simulate(*set_args([*TINY_OVERRIDES, "rounds=2", ENCODER, f"output.run_dir={run_dir}"]), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted({k.split(".")[1] for k in torch.load(run_dir / "encoder.pt")}) == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    ("encoder", "key", "message"),
    [
        ("{name: module, path: user_models}", "model.encoder.path", "must be 'package.module:Name'"),
        ("{name: module, path: 'no_such_pkg.models:Encoder'}", "model.encoder.path", "cannot import"),
        ("{name: module, path: 'user_models:Missing'}", "model.encoder.path", "cannot import"),
        ("{name: module, path: 'user_models:NoBlocks'}", "model.encoder.path", "declares no blocks"),
        ("{name: module, path: 'user_models:Encoder', kwargs: {colour: 3}}", "model.encoder.kwargs", "colour"),
        ("{name: module, path: 'user_models:Broken'}", "model.encoder.path", "failed to build"),
    ],
)
def test_bad_user_encoders_are_refused_with_the_key(user_package, encoder, key, message):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [*TINY_OVERRIDES, f"model.encoder={encoder}"])
    assert raised.value.path.startswith(key) and message in str(raised.value)


def test_gradnorm_needs_a_linear_last_block_and_is_refused_without_one(user_package, tmp_path):
    (user_package / "norm_last.py").write_text(
        textwrap.dedent(
            """
            from torch import nn


            class Encoder(nn.Module):
                def __init__(self, input_dim, representation_dim, image_shape):
                    super().__init__()
                    self.blocks = nn.ModuleList(
                        [nn.Sequential(nn.Linear(input_dim, representation_dim), nn.ReLU()), nn.LayerNorm(representation_dim)]
                    )
            """
        )
    )
    encoder = "model.encoder={name: module, path: 'norm_last:Encoder'}"
    with pytest.raises(ConfigError) as raised:
        load_config(None, [*TINY_OVERRIDES, encoder, "client.balancing={name: gradnorm}"])
    assert raised.value.path == "client.balancing" and "nn.Linear" in str(raised.value)
    run_dir = run_in_process(tmp_path, "run", *tiny_overrides(2), "rounds=1", encoder, nodes=2)  # static weights: fine
    assert (run_dir / "encoder.pt").is_file()
    sys.modules.pop("norm_last", None)
