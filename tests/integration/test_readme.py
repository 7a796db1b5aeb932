"""The README's curl examples work against `serve run serve_config.yaml`, as written."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def _curl_examples() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    cmds = []
    for block in blocks:
        for cmd in re.split(r"\n\s*\n", block.strip()):
            if cmd.strip().startswith("curl"):
                cmds.append(cmd.replace("\\\n", " "))
    return cmds


def test_readme_has_the_three_commands():
    text = README.read_text()
    assert "./scripts/setup.sh" in text and "serve run serve_config.yaml" in text
    assert ".venv/bin/python -m pytest -v tests" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -v tests" in ci  # CI runs the README's test command


def test_readme_curl_examples(base_url):
    cmds = [c for c in _curl_examples() if "localhost:8000" in c]
    assert len(cmds) == 3
    port = base_url.rsplit(":", 1)[1]
    chat = subprocess.run(cmds[0].replace("localhost:8000", f"127.0.0.1:{port}"), shell=True,
                          capture_output=True, text=True, timeout=60)
    body = json.loads(chat.stdout)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] is not None
    assert "Paris" in body["choices"][0]["message"]["content"]  # the default model is a real one
    stream = subprocess.run(cmds[1].replace("localhost:8000", f"127.0.0.1:{port}"), shell=True,
                            capture_output=True, text=True, timeout=60)
    events = [line[6:] for line in stream.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] >= 1
    # The cache example: the second run of the same request is an exact hit.
    cache = cmds[2].replace("localhost:8000", f"127.0.0.1:{port}")
    first = subprocess.run(cache, shell=True, capture_output=True, text=True, timeout=60).stdout.lower()
    assert first.startswith("x-raygate-cache: ")
    deadline = time.monotonic() + 10
    while True:  # the write-back runs after the first response
        again = subprocess.run(cache, shell=True, capture_output=True, text=True, timeout=60).stdout.lower()
        if "hit-exact" in again or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.strip() == "x-raygate-cache: hit-exact"


def test_readme_ray_dashboard_command_passes_its_token(ray_context):
    """Ray 2.60's dashboard wants the cluster's token: the README's command sends it; without it, 401."""
    cmds = [c for c in _curl_examples() if "localhost:8265" in c]
    assert len(cmds) == 1
    url = "http://" + ray_context.dashboard_url
    venv_bin = str(Path(sys.executable).parent) + "/"
    cmd = cmds[0].replace("http://localhost:8265", url).replace("localhost:8265", url).replace(".venv/bin/", venv_bin)
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "raygate" in json.loads(out.stdout)["applications"]
    bare = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url + "/api/serve/applications/"],
                          capture_output=True, text=True, timeout=60)
    assert bare.stdout == "401"
