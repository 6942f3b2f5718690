"""The ResNet encoder: torchvision's architecture (parameter for parameter), local torchvision checkpoints
loaded by name and refused with the key when they do not fit, its five blocks the unit of sharing, and a
dense federation with it whose decoder heads never cross the wire."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clients.client_app import make_client_app
from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.core.params import ENCODER_PREFIX
from fedmtl.model.config import ModelConfig
from fedmtl.model.networks import initial_encoder_state, representation_shape
from fedmtl.model.resnet import ResNetEncoder
from tests.loopback import run_in_process
from tests.test_wire import _all_array_keys, _context, _train_message

# torchvision's resnet18 / 34 / 50 parameter counts (11,689,512 / 21,797,672 / 25,557,032) less the
# 1000-class fc layer (513,000 / 513,000 / 2,049,000)
TORCHVISION_ENCODER_PARAMETERS = {18: 11_176_512, 34: 21_284_672, 50: 23_508_032}
IMAGE = (3, 32, 32)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_the_encoder_has_torchvisions_parameters_and_five_blocks(depth):
    encoder = ResNetEncoder(depth=depth)
    blocks = encoder.build(ModelConfig(encoder=encoder), math.prod(IMAGE), IMAGE)
    assert sum(p.numel() for p in blocks.parameters()) == TORCHVISION_ENCODER_PARAMETERS[depth]
    assert len(blocks) == encoder.num_blocks(ModelConfig(), 0, IMAGE) == 5
    channels = 512 if depth < 50 else 2048
    assert representation_shape(blocks, math.prod(IMAGE)) == (channels, 1, 1)  # 32 / 32


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_normalisation_keeps_only_parameters_so_only_parameters_travel(norm):
    encoder = ResNetEncoder(width=8, norm=norm, stem="small")
    blocks = encoder.build(ModelConfig(encoder=encoder), math.prod(IMAGE), IMAGE)
    assert set(blocks.state_dict()) == {name for name, _ in blocks.named_parameters()}
    assert representation_shape(blocks, math.prod(IMAGE)) == (64, 4, 4)  # small stem: 32 / 8


def as_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys in torchvision's layout, with BatchNorm's running statistics and an fc layer added."""
    out = {}
    for key, value in state.items():
        block, rest = key.split(".", 1)
        name = rest if block == "0" else f"layer{block}.{rest}"
        out[name] = value.clone()
        if name.endswith("weight") and value.dim() == 1:  # a norm layer
            stem = name[: -len("weight")]
            out[stem + "running_mean"] = torch.zeros_like(value)
            out[stem + "running_var"] = torch.ones_like(value)
            out[stem + "num_batches_tracked"] = torch.tensor(7)
    out["fc.weight"], out["fc.bias"] = torch.randn(10, 64), torch.randn(10)
    return out


def test_a_torchvision_checkpoint_on_disk_loads_by_name(tmp_path):
    source = ResNetEncoder(width=8, norm="batch")
    torch.manual_seed(1)
    expected = source.build(ModelConfig(encoder=source), math.prod(IMAGE), IMAGE).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(as_torchvision(expected), path)
    cfg = load_config(
        None, ["data={name: shapes}", f"model.encoder={{name: resnet, width: 8, norm: batch, weights: {path}}}"]
    )
    state = initial_encoder_state(cfg.model, cfg.data.feature_dim(), seed=5, image_shape=cfg.data.image_shape())
    assert set(state) == {ENCODER_PREFIX + k for k in expected}
    assert all(torch.equal(state[ENCODER_PREFIX + k], v) for k, v in expected.items())


def test_checkpoints_that_do_not_fit_are_refused_with_the_key(tmp_path):
    source = ResNetEncoder(width=8)
    state = as_torchvision(source.build(ModelConfig(encoder=source), math.prod(IMAGE), IMAGE).state_dict())
    torch.save(state, tmp_path / "w8.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, tmp_path / "short.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    cases = {
        "w8.pth": ("width: 16", "has shape"),
        "short.pth": ("width: 8", "lacks"),
        "junk.pth": ("width: 8", "cannot read"),
        "missing.pth": ("width: 8", "no such file"),
    }
    for name, (width, message) in cases.items():
        with pytest.raises(ConfigError) as raised:
            load_config(
                None, ["data={name: shapes}", f"model.encoder={{name: resnet, {width}, weights: {tmp_path / name}}}"]
            )
        assert raised.value.path == "model.encoder.weights" and message in str(raised.value), name


DENSE = (
    "data={name: shapes, canvas: 12}",
    "clients.count=3",
    "clients.tasks=[[segmentation, depth, normals, edges], [segmentation], [depth, normals]]",
    "clients.samples_per_task=12",
    "clients.eval_samples_per_task=8",
    "client.local_steps=2",
    "client.batch_size=6",
    "model.encoder={name: resnet, width: 4, stem: small}",
    "model.head_hidden=[4]",
)


def test_decoder_heads_stay_on_the_client_and_only_the_encoder_travels(flower_identity):
    cfg = load_config(None, list(DENSE))
    encoder = initial_encoder_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
    context = _context(partition=0)
    reply = make_client_app(cfg)(_train_message(encoder, 1), context)
    assert _all_array_keys(reply) == set(encoder)
    private = context.state[protocol.PRIVATE_STATE].to_torch_state_dict()
    decoders = {key.split(".")[2] for key in private if key.startswith("model.heads.") and ".decode." in key}
    assert decoders == {"segmentation", "depth", "normals", "edges"}


def test_a_dense_federation_with_partial_sharing_and_gradnorm_trains_and_reports_every_kind(tmp_path):
    run_dir = run_in_process(
        tmp_path,
        "run",
        *DENSE,
        "rounds=2",
        "model.sharing={name: partial, shared_blocks: 3}",
        "client.balancing={name: gradnorm}",  # W: the last convolution of the last block
    )
    encoder = torch.load(run_dir / "encoder.pt")
    assert sorted({k.split(".")[1] for k in encoder}) == ["0", "1", "2"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = {(r["client"], r["task"]): r for r in rows if r["split"] == "eval" and r["round"] == 2}
    assert set(final) == {
        (0, "segmentation"),
        (0, "depth"),
        (0, "normals"),
        (0, "edges"),
        (1, "segmentation"),
        (2, "depth"),
        (2, "normals"),
    }
    headline = {"segmentation": "miou", "depth": "rmse", "normals": "mean_angle", "edges": "iou"}
    assert all(math.isfinite(row[headline[task]]) for (_, task), row in final.items())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {t["task"]: t["metric"] for t in summary["tasks"]} == headline


@pytest.mark.slow
def test_the_fedhca2_small_config_runs_from_the_command_line(tmp_path, simulate_env):
    """configs/fedhca2_small.yaml as shipped (ResNet-18, shapes suite, Ray workers), shortened to one round."""
    from tests.helpers import assert_no_leftover_processes, simulate

    run_dir = tmp_path / "run"
    result = simulate(
        "--config", "configs/fedhca2_small.yaml",
        "--set", "rounds=1", "--set", "clients.samples_per_task=8", "--set", "clients.eval_samples_per_task=4",
        "--set", "client.local_steps=1", "--set", f"output.run_dir={run_dir}",
        env=simulate_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [t["task"] for t in summary["tasks"]] == ["segmentation", "depth", "normals", "edges"]
    assert all(math.isfinite(t["value_final"]) for t in summary["tasks"])
    assert_no_leftover_processes(simulate_env)


@pytest.mark.parametrize(
    ("encoder", "image"),
    [
        ({"name": "mlp"}, None),
        ({"name": "cnn"}, (1, 12, 12)),
        ({"name": "resnet", "width": 4}, (3, 32, 32)),
        ({"name": "resnet", "width": 4}, (3, 37, 23)),
        ({"name": "resnet", "width": 4, "stem": "small"}, (3, 17, 9)),
        ({"name": "resnet", "depth": 50, "width": 4}, (1, 64, 48)),
    ],
)
def test_a_declared_output_shape_is_what_the_built_encoder_gives(encoder, image):
    from fedmtl.core.typed import parse_component
    from fedmtl.model.encoders import Encoder

    component = parse_component(Encoder, encoder, "model.encoder")
    model = ModelConfig(encoder=component)
    input_dim = math.prod(image) if image is not None else 5
    declared = component.output_shape(model, input_dim, image)
    assert declared == representation_shape(component.build(model, input_dim, image), input_dim)
