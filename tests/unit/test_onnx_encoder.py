"""The ONNX embedder: exported once per machine, the same vectors as sentence-transformers at every
length and batch size, and a refusal (then PyTorch) where the export cannot be trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cache.embedder import Embedder, default_model_path
from cache.onnx_encoder import OnnxExportError, OnnxSentenceEncoder, _check_graph, _mean_pooled, export_graph

# Lengths from one token to past the model's 256-token limit, in one padded batch and one at a time.
TEXTS = ["ok", "Is the museum open on Mondays?",
         "Summarise the causes of the French Revolution in three bullet points, citing one primary source each.",
         "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n" * 6,
         " ".join(f"token{i}" for i in range(300))]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(default_model_path(), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RAYGATE_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_the_fp32_graph_reproduces_sentence_transformers_at_every_length(cache_dir, reference):
    encoder = OnnxSentenceEncoder(default_model_path(), int8=False)
    assert encoder.exported and encoder.graph_path.is_relative_to(cache_dir)
    batched = encoder.encode(TEXTS)
    single = np.vstack([encoder.encode([t]) for t in TEXTS])
    assert np.abs(batched - reference).max() < 1e-4
    assert np.abs(single - reference).max() < 1e-4


def test_the_int8_graph_stays_close_and_is_exported_once(cache_dir, reference):
    first = OnnxSentenceEncoder(default_model_path(), int8=True)
    again = OnnxSentenceEncoder(default_model_path(), int8=True)
    assert first.exported and not again.exported and again.graph_path == first.graph_path
    got = again.encode(TEXTS)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert (got * reference).sum(axis=1).min() > 0.95


def test_the_check_refuses_a_graph_that_differs_from_the_model(tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    graph = export_graph(Path(default_model_path()), tmp_path, int8=False)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    other = AutoModel.from_pretrained(default_model_path(), attn_implementation="eager")
    with torch.no_grad():
        other.encoder.layer[0].output.dense.weight.mul_(1.5)  # not the model the graph was made from

    def tokens(texts):
        return tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")

    names = ["input_ids", "attention_mask", "token_type_ids"]
    _check_graph(graph, _mean_pooled(AutoModel.from_pretrained(default_model_path(), attn_implementation="eager")),
                 tokens, names, int8=False)  # the model it was made from passes
    with pytest.raises(OnnxExportError):
        _check_graph(graph, _mean_pooled(other), tokens, names, int8=False)


def test_a_model_that_is_not_mean_pooled_is_served_by_pytorch(cache_dir, tmp_path):
    source = Path(default_model_path())
    model = tmp_path / "cls-pooled"
    shutil.copytree(source, model, symlinks=True, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    for weights in list(source.glob("*.safetensors")) + list(source.glob("*.bin")):
        (model / weights.name).symlink_to(weights)
    pooling = json.loads((model / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (model / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(OnnxExportError):
        OnnxSentenceEncoder(str(model))
    embedder = Embedder(str(model), threads=1, int8=False, backend="onnx")
    assert embedder.backend == "torch" and embedder.encode(["hello"]).shape == (1, embedder.dim)
    assert not list(cache_dir.rglob("*.onnx"))
