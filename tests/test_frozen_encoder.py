"""Starting from a saved encoder (``model.init_from``: a state dict or a run's ``encoder.pt``) and
training only the heads on it (``client.train_encoder: false``): the alternative to multi-task training
with a pretrained encoder. The encoder of a frozen run stays exactly the file's, the heads learn, and a
file that does not fit is refused with the key."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from tests.helpers import tiny_overrides
from tests.loopback import run_in_process

THREE = tiny_overrides(3)


def eval_losses(run_dir, round_):
    return {
        (r["client"], r["task"]): r["loss"]
        for r in read_rows(run_dir / "metrics.jsonl")
        if r["split"] == "eval" and r["round"] == round_
    }


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrained")
    return run_in_process(tmp, "pretrain", *THREE, "rounds=2")


def test_a_frozen_run_keeps_the_files_encoder_and_trains_the_heads(pretrained, tmp_path):
    source = pretrained / "encoder.pt"
    run_dir = run_in_process(
        tmp_path, "heads", *THREE, "rounds=2", f"model.init_from={source}", "client.train_encoder=false"
    )
    before, after = torch.load(source), torch.load(run_dir / "encoder.pt")  # one group: the state dict itself
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(n == 0 for r in read_rows(run_dir / "server.jsonl") for n in r["update_norms"])
    start, end = eval_losses(run_dir, 0), eval_losses(run_dir, 2)
    assert sum(end.values()) < sum(start.values())  # the heads learned on the frozen embeddings


def test_init_from_starts_where_the_file_is(pretrained, tmp_path):
    fresh = run_in_process(tmp_path, "fresh", *THREE, "rounds=1")
    warm = run_in_process(tmp_path, "warm", *THREE, "rounds=1", f"model.init_from={pretrained / 'encoder.pt'}")
    assert eval_losses(fresh, 0) != eval_losses(warm, 0)
    state = torch.load(pretrained / "encoder.pt")
    plain = tmp_path / "groups.pt"
    torch.save({"all": state}, plain)  # an encoder.pt of one named group works as well
    again = run_in_process(tmp_path, "again", *THREE, "rounds=1", f"model.init_from={plain}")
    assert eval_losses(again, 0) == eval_losses(warm, 0)


def test_files_that_do_not_fit_are_refused_with_the_key(pretrained, tmp_path):
    def refused(path, *extra):
        with pytest.raises(ConfigError) as raised:
            load_config(None, [*THREE, f"model.init_from={path}", *extra])
        assert raised.value.path == "model.init_from"
        return str(raised.value)

    assert "no such file" in refused(tmp_path / "missing.pt")
    assert "has shape" in refused(pretrained / "encoder.pt", "model.encoder_hidden=[5]")
    state = torch.load(pretrained / "encoder.pt")
    torch.save({"group-0": state, "group-1": state}, tmp_path / "groups.pt")
    assert "holds the encoders of ['group-0', 'group-1']" in refused(tmp_path / "groups.pt")
    (tmp_path / "junk.pt").write_text("not a tensor file")
    assert "cannot read" in refused(tmp_path / "junk.pt")
    torch.save({k: v for k, v in state.items() if ".0." not in k}, tmp_path / "part.pt")
    assert "lacks encoder parameters" in refused(tmp_path / "part.pt")


def test_private_encoder_blocks_start_from_the_file_too(pretrained):
    """Partial sharing: the server sends block 0; a client's own block 1 starts from the file as well."""
    from fedmtl.local.client import LocalClient

    source = pretrained / "encoder.pt"
    cfg = load_config(None, [*THREE, f"model.init_from={source}", "model.sharing={name: partial, shared_blocks: 1}"])
    state = torch.load(source)
    shared = {k: v for k, v in state.items() if k.startswith("encoder.0.")}
    model = LocalClient(cfg, cfg.participants()[0]).build_model(shared, {})
    built = model.state_dict()
    assert all(torch.equal(built[k], v) for k, v in state.items())
