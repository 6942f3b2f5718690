"""Text workloads: a text column as token ids (built-in vocabulary or a local Hugging Face tokenizer), a
multi-label task kind, a Hugging Face encoder built from a config or a local directory (no download),
and a federation of them whose heads stay private; bad settings refused with their key."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, BertTokenizerFast

from clients.client_app import make_client_app
from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.data.partition import client_plan
from fedmtl.data.suites.columns import Column, TargetColumn, encode_target
from fedmtl.data.suites.text import TextInput
from fedmtl.data.task_kinds import TASK_KINDS
from fedmtl.model.config import ModelConfig
from fedmtl.model.huggingface import HuggingFaceEncoder
from fedmtl.model.networks import initial_encoder_state
from tests.loopback import run_in_process
from tests.test_wire import _all_array_keys, _context, _train_message

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 40,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 16,
}
BERT_SETTING = "model.encoder={name: huggingface, config: " + json.dumps(TINY_BERT) + "}"


def reviews(rows: int = 80) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(rows):
        happy, topic = bool(rng.random() < 0.5), ["sport", "film", "food"][i % 3]
        labels = [name for name, p in (("insult", 0.3), ("threat", 0.2)) if rng.random() < p]
        words = ["great" if happy else "awful", topic, "the", *(["idiot"] if "insult" in labels else [])]
        out.append(
            {
                "text": " ".join(words),
                "sentiment": "pos" if happy else "neg",
                "topic": topic,
                "toxicity": "|".join(labels) or "|",
                "site": i % 3,
            }
        )
    return out


@pytest.fixture
def reviews_csv(tmp_path) -> Path:
    path = tmp_path / "reviews.csv"
    rows = reviews()
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def text_config(path: Path, *overrides: str) -> tuple[str, ...]:
    return (
        f"data={{name: table, path: {path}, text: {{column: text, max_length: 6, vocab_size: 40}}, "
        "targets: [{column: sentiment, kind: classification}, {column: topic, kind: classification}, "
        "{column: toxicity, kind: multilabel}], client_column: site}",
        "clients.count=3",
        "clients.tasks_per_client=3",
        "client.local_steps=2",
        "client.batch_size=8",
        "model.head_hidden=[]",
        BERT_SETTING,
        *overrides,
    )


# ----------------------------------------------------------------------------- tokenisers and targets


def test_the_built_in_vocabulary_ranks_words_by_frequency_and_pads_with_zero():
    text = TextInput(column="t", max_length=4, vocab_size=4)
    column = Column(np.array(["b a a", "a b c d e", None, "c!"], dtype=object))
    ids = text.token_ids(column)
    # counts: a 3, b 2, c 2, then d, e, !: a -> 2, b -> 3 (b before c alphabetically); the rest unknown (1)
    assert ids.tolist() == [[3, 2, 2, 0], [2, 3, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert ids.dtype == np.float32


def test_a_local_hugging_face_tokenizer_is_used_with_its_own_ids(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "great", "film"]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(str(tmp_path / "tok"))
    ids = TextInput(column="t", max_length=5, tokenizer=str(tmp_path / "tok")).token_ids(
        Column(np.array(["great film", "film unknownword"], dtype=object))
    )
    assert ids.tolist() == [[2, 5, 6, 3, 0], [2, 6, 1, 3, 0]]  # [CLS] ... [SEP] [PAD]


def test_multilabel_cells_split_into_label_sets_and_empty_cells_are_missing():
    column = Column(np.array(["threat|insult", "|", None, "insult"], dtype=object))
    target = encode_target(column, TargetColumn("toxicity", "multilabel"), "data.targets[0]")
    assert target.classes == ("insult", "threat")
    assert target.present(np.arange(4)).tolist() == [True, True, False, True]
    assert target.tensor(np.array([0, 1, 3])).tolist() == [[1, 1], [0, 0], [1, 0]]
    assert target.spec_classes == 2


def test_multilabel_metrics_by_hand():
    kind = TASK_KINDS["multilabel"]
    prediction = torch.tensor([[2.0, -1.0, 3.0], [-2.0, 1.0, -1.0]])  # predicts {0, 2} and {1}
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # true {0} and {1}
    metrics = kind.metrics(prediction, target)
    assert metrics["micro_f1"] == pytest.approx(2 * 2 / (3 + 2))  # 2 hits, 3 predicted, 2 true
    assert metrics["macro_f1"] == pytest.approx((1 + 1 + 0) / 3)  # label 2: predicted once, never true
    assert metrics["subset_accuracy"] == pytest.approx(0.5)
    expected_loss = torch.nn.functional.binary_cross_entropy_with_logits(prediction, target)
    assert kind.loss(prediction, target).item() == pytest.approx(expected_loss.item())


# ----------------------------------------------------------------------------- the encoder


def test_the_encoders_blocks_reproduce_the_models_masked_mean_pooled_states():
    encoder = HuggingFaceEncoder(config=TINY_BERT)
    torch.manual_seed(0)
    blocks = encoder.build(ModelConfig(encoder=encoder), 6, None).eval()
    assert [type(b).__name__ for b in blocks] == ["Embed", "Layer", "Layer", "Pool"]
    settings = dict(TINY_BERT)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    ids = torch.tensor([[5, 9, 12, 0, 0, 0], [7, 7, 8, 9, 10, 11]])
    h = ids.float()
    for block in blocks:
        h = block(h)
    mask = (ids != 0).float()[..., None]
    states = model(input_ids=ids, attention_mask=mask[..., 0].long()).last_hidden_state
    assert torch.allclose(h, (states * mask).sum(1) / mask.sum(1), atol=1e-5)


def test_a_saved_model_directory_is_the_start(tmp_path):
    settings = dict(TINY_BERT)
    torch.manual_seed(3)
    saved = AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
    saved.save_pretrained(str(tmp_path / "bert"))
    encoder = HuggingFaceEncoder(path=str(tmp_path / "bert"))
    blocks = encoder.build(ModelConfig(encoder=encoder), 6, None)
    assert torch.equal(blocks[0].embeddings.word_embeddings.weight, saved.embeddings.word_embeddings.weight)
    assert torch.equal(blocks[2].layer.output.dense.weight, saved.encoder.layer[1].output.dense.weight)


# ----------------------------------------------------------------------------- a federation


def test_heads_stay_on_the_client_and_only_the_text_encoder_travels(reviews_csv, flower_identity):
    cfg = load_config(None, list(text_config(reviews_csv)))
    encoder = initial_encoder_state(cfg.model, cfg.data.feature_dim(), cfg.seed)
    context = _context(partition=0)
    reply = make_client_app(cfg)(_train_message(encoder, 1), context)
    assert _all_array_keys(reply) == set(encoder) and all(k.startswith("encoder.") for k in encoder)
    private = context.state[protocol.PRIVATE_STATE].to_torch_state_dict()
    assert {k.split(".")[2] for k in private if k.startswith("model.heads.")} == {"sentiment", "topic", "toxicity"}


def test_a_text_federation_with_a_multilabel_task_trains_and_reports(reviews_csv, tmp_path):
    run_dir = run_in_process(tmp_path, "run", *text_config(reviews_csv, "rounds=2"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["split"] == "eval" and r["round"] == 2]
    assert {r["task"] for r in final} == {"sentiment", "topic", "toxicity"}
    assert all(math.isfinite(r["micro_f1"]) for r in final if r["task"] == "toxicity")
    assert all(math.isfinite(r["accuracy"]) for r in final if r["task"] != "toxicity")
    assert sorted({k.split(".")[1] for k in torch.load(run_dir / "encoder.pt")}) == ["0", "1", "2"]  # Pool: none


def test_a_hugging_face_dataset_on_disk_gives_its_text_column(tmp_path):
    rows = reviews()
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "reviews"))
    cfg = load_config(
        None,
        [
            f"data={{name: hub, dataset: {tmp_path / 'reviews'}, text: {{column: text, max_length: 6, vocab_size: 40}}, "
            "targets: [{column: sentiment, kind: classification}, {column: toxicity, kind: multilabel}], "
            "client_column: site}",
            "clients.count=3",
            "clients.tasks_per_client=2",
            BERT_SETTING,
        ],
    )
    data = cfg.data.client_data(0, client_plan(cfg.clients, cfg.data, 0, 1))
    x = data.train["sentiment"].x
    assert x.shape[1] == 6 and bool((x == x.round()).all()) and float(x.max()) < 40
    assert data.train["toxicity"].y.shape[1] == 2


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("model.encoder={name: huggingface}", "model.encoder.path", "exactly one"),
        ("model.encoder={name: huggingface, path: /no/such/dir}", "model.encoder.path", "no config.json"),
        ("model.encoder={name: huggingface, config: {hidden_size: 8}}", "model.encoder.config", "model_type"),
        (BERT_SETTING.replace('"vocab_size": 40', '"vocab_size": 5'), "model.encoder", "vocabulary"),
        ("data.text.tokenizer=/no/such/dir", "data.text.tokenizer", "no such directory"),
        ("data.text.column=site", "data.text.column", "numbers, not text"),
        ("data.features=[site]", "data.features", "does not apply with data.text"),
    ],
)
def test_bad_text_settings_are_refused_with_their_key(reviews_csv, override, key, message):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [*text_config(reviews_csv), override])
    assert raised.value.path == key and message in str(raised.value)
