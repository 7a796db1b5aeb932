"""The demo model is built offline and deterministically: two builds are byte-identical."""

import hashlib

from deployments.demo_model import ARCH, build_demo_model


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_two_builds_are_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_demo_model(a)
    build_demo_model(b)
    assert _digest(a) == _digest(b)
    assert ARCH["hidden_size"] // ARCH["num_attention_heads"] == 64  # vLLM CPU attention needs head_dim 64


def test_tokenizer_has_a_chat_template(tmp_path):
    from transformers import AutoTokenizer

    build_demo_model(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|user|>" in text and text.endswith("<|assistant|>\n")
