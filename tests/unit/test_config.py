"""serve_config.yaml's args validate at build time; typos fail with the field's name."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import BUILTIN_DEMO, AppConfig

REPO = Path(__file__).resolve().parents[2]


def test_repo_config_is_valid_and_serves_the_demo_model():
    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    app = cfg["applications"][0]
    assert app["import_path"] == "deployments.app:build_app"
    args = AppConfig.model_validate(app["args"])
    assert args.models[0].model == BUILTIN_DEMO
    assert args.models[0].engine_args.max_model_len == 2048


def test_defaults_need_no_args():
    cfg = AppConfig.model_validate({})
    assert [m.name for m in cfg.models] == ["tiny-llama"]


def test_unknown_keys_fail_with_their_name():
    with pytest.raises(ValidationError, match="streming"):
        AppConfig.model_validate({"models": [{"streming": {}}]})


def test_engine_args_pass_through_unknown_vllm_arguments():
    cfg = AppConfig.model_validate({"models": [{"engine_args": {"max_num_batched_tokens": 4096, "dtype": "float16"}}]})
    kwargs = cfg.models[0].engine_args.as_kwargs()
    assert kwargs["max_num_batched_tokens"] == 4096 and kwargs["dtype"] == "float16"
    assert "quantization" not in kwargs  # unset optional arguments are left to vLLM's defaults


def test_duplicate_model_names_are_rejected():
    with pytest.raises(ValidationError, match="duplicate"):
        AppConfig.model_validate({"models": [{"model": "a/b"}, {"model": "c", "served_model_name": "a/b"}]})
