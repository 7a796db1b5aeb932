"""Render k8s/rayservice.yaml from serve_config.yaml, so that the two cannot drift.

Why: KubeRay's RayService carries the Serve application as one YAML string, `spec.serveConfigV2`.
A hand-copied string goes stale the first time serve_config.yaml changes. Here the manifest is a
function of serve_config.yaml plus the production overrides listed in OVERRIDES (nothing else is
changed), and `--check`, which tests/unit/test_k8s_manifests.py runs, fails while the committed
manifest differs from what this script renders.

    python scripts/render_k8s.py            # rewrite k8s/rayservice.yaml and k8s/examples/*.yaml
    python scripts/render_k8s.py --check    # exit 1 with a diff when one of them is stale

k8s/examples/ holds the same application for models that need several GPUs per replica (a 70B
model at tensor_parallel_size 4, and at 4 x pipeline_parallel_size 2): VARIANTS lists their extra
overrides. The GPU worker group of every manifest is derived from its model's parallel sizes
(`gpu_worker_group`): GPUs per pod = placement.accelerators_per_node (a tensor-parallel group
never spans pods), pods per replica = tensor x pipeline / GPUs per pod, and the group's replica
bounds follow the model's autoscaling bounds times pods per replica.

The application's code is not shipped through a `runtime_env.working_dir`: it is installed in the
image (k8s/Dockerfile builds IMAGE from this repository), so `import_path: deployments.app:build_app`
and the request router's class import from site-packages on every pod, and a new version of the code
is a new image tag. Cluster sizes below (CPUs and memory per GPU) are starting points; k8s/README.md
says what to change for other GPUs.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python scripts/render_k8s.py` reads the model config with raygate's own code
    sys.path.insert(0, str(REPO))
SERVE_CONFIG = REPO / "serve_config.yaml"
MANIFEST = REPO / "k8s" / "rayservice.yaml"
EXAMPLES = REPO / "k8s" / "examples"

NAME = "raygate"
RAY_VERSION = "2.60.0"  # the ray[serve] pin in pyproject.toml and the base image of k8s/Dockerfile
IMAGE = "ghcr.io/raygate/raygate:latest"  # placeholder: push k8s/Dockerfile's build to your registry
REDIS_URL = "redis://raygate-redis:6379/0"  # the Service in k8s/redis.yaml
API_KEYS_SECRET = "raygate-api-keys"  # keys `api-keys` ("tenant:key,...") and `admin-keys` (k8s/README.md)
HF_SECRET = "raygate-hf"  # key `token`: the Hugging Face token for gated models (HF_TOKEN on GPU pods)
# Hugging Face cache of each GPU node, shared by the replicas (and pods) on it and kept across pod
# restarts: a hostPath volume, mounted at the path that `loading.cache_dir` names.
HF_CACHE_HOST_PATH = "/var/lib/raygate/hf-cache"
HF_CACHE_MOUNT = "/mnt/hf-cache"

# The default manifest: one GPU worker pod holds one LLM replica (num_gpus: 1); Serve autoscaling
# adds replicas up to GPU_WORKERS_MAX, and Ray's autoscaler adds a pod for each replica that finds
# no free GPU. Pods are sized per GPU.
GPUS_PER_WORKER = 1
GPU_WORKERS_MIN = 1
GPU_WORKERS_MAX = 4
WORKER_CPUS_PER_GPU = 8
WORKER_MEMORY_GI_PER_GPU = 32
HEAD_CPUS = 4
HEAD_MEMORY = "16Gi"
# A replica loading a 70B model from the Hub takes minutes; Serve's controller kills a replica still
# loading when it recovers it after a restart past RAY_SERVE_SLOW_STARTUP_WARNING_S (deployments/app.py).
STARTUP_ALLOWANCE_S = 1800

DELETE = object()  # an override value: remove the key (it must exist, so stale overrides fail loudly)

_APP = "applications.0.args."
_LLM = _APP + "models.0."

# Production overrides of serve_config.yaml, as dotted paths (list items by index). Setting a path
# creates missing mappings on the way; deleting one that does not exist is an error.
OVERRIDES: dict[str, Any] = {
    # A GPU-sized Hugging Face model instead of the CPU default built offline (any vLLM-supported id works).
    _LLM + "model": "Qwen/Qwen2.5-1.5B-Instruct",
    _LLM + "served_model_name": "qwen2.5-1.5b-instruct",
    # Qwen2.5's own chat template renders tools in the Hermes format that the `hermes` parser reads.
    _LLM + "chat_template": None,
    # One GPU per replica. vLLM's engine-core process and the replica's event loop each keep a core
    # busy; the other half of a worker pod's CPUs is left to the proxy and the ingress/cache replicas.
    _LLM + "num_gpus": GPUS_PER_WORKER,
    _LLM + "num_cpus": WORKER_CPUS_PER_GPU // 2,
    # Hub downloads go to the node's cache volume (HF_CACHE_MOUNT), once per node.
    _LLM + "loading.cache_dir": HF_CACHE_MOUNT,
    _LLM + "loading.startup_allowance_s": STARTUP_ALLOWANCE_S,
    # A GPU batches more sequences at once than the CPU default's 64.
    _LLM + "engine_args.max_num_seqs": 128,
    # bfloat16 on GPUs; the CPU default is float32 because vLLM's bf16 path on a CPU host (one with
    # AMX) gave wrong answers (see serve_config.yaml).
    _LLM + "engine_args.dtype": "bfloat16",
    # CUDA graphs on (vLLM's default); the CPU config skips their compilation.
    _LLM + "engine_args.enforce_eager": DELETE,
    # GPU nodes have cores to spare for chunks: a larger chunk budget per replica (the demo's 400/s
    # protects a 2-core host whose engine shares the CPU).
    _LLM + "streaming.max_chunks_per_s": 4000,
    # CPU-only setting (the KV cache size of vLLM's CPU backend).
    _LLM + "env.VLLM_CPU_KVCACHE_SPACE": DELETE,
    # Queue-length autoscaling (serve_config.yaml's policy) over the GPU worker pods. The admission
    # gate lets at most `max_inflight_per_replica` (the engine's max_num_seqs, 128) requests reach one
    # replica: scale out before.
    _LLM + "deployment.autoscaling_config.min_replicas": GPU_WORKERS_MIN,
    _LLM + "deployment.autoscaling_config.max_replicas": GPU_WORKERS_MAX,
    _LLM + "deployment.autoscaling_config.target_ongoing_requests": 24,
    # The in-cluster Redis (k8s/redis.yaml) shared by every cache replica, not an embedded Valkey.
    _APP + "cache.redis_url": REDIS_URL,
    # API keys required; the plain keys come from the Secret API_KEYS_SECRET (see _auth_env).
    _APP + "auth.enabled": True,
    # The front door's bound per ingress replica follows the engines its gate may use. The model is
    # colocated (ingress.colocate auto, tensor_parallel_size 1): each ingress replica is one GPU pod's
    # engine, so max_inflight_per_replica (128) + max_queued (2 per slot: 256), plus 32 for cache hits.
    "controller_options.runtime_env.env_vars.RAYGATE_FRONT_DOOR_MAXCONN": str(128 + 256 + 32),
    "applications.0.runtime_env.env_vars.RAYGATE_FRONT_DOOR_MAXCONN": str(128 + 256 + 32),
}


@dataclass(frozen=True)
class Variant:
    """One rendered manifest: its file, and overrides applied after OVERRIDES."""

    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _llama_70b(tp: int, pp: int) -> dict[str, Any]:
    """Llama 3.3 70B (gated: needs the raygate-hf Secret) on 4-GPU pods (80 GB GPUs: A100/H100)."""
    return {
        _LLM + "model": "meta-llama/Llama-3.3-70B-Instruct",
        _LLM + "served_model_name": "llama-3.3-70b-instruct",
        # Llama 3.x's own template writes tool calls as JSON, read by vLLM's `llama3_json` parser.
        _LLM + "chat_template": None,
        _LLM + "tool_call_parser": "llama3_json",
        _LLM + "engine_args.tensor_parallel_size": tp,
        _LLM + "engine_args.pipeline_parallel_size": pp,
        _LLM + "engine_args.max_model_len": 8192,
        _LLM + "num_gpus": tp * pp,  # checked against tp x pp at start-up
        _LLM + "placement.accelerators_per_node": 4,
        _LLM + "deployment.autoscaling_config.max_replicas": 2,
        # What the admission gate holds: 2 replicas x 128 in flight (max_num_seqs) + 256 queued (2 per
        # slot of one replica), plus 32 for cache hits.
        "controller_options.runtime_env.env_vars.RAYGATE_FRONT_DOOR_MAXCONN": str(2 * 128 + 256 + 32),
        "applications.0.runtime_env.env_vars.RAYGATE_FRONT_DOOR_MAXCONN": str(2 * 128 + 256 + 32),
    }


VARIANTS: list[Variant] = [
    Variant(MANIFEST),
    Variant(EXAMPLES / "llama-70b-tp4.yaml", _llama_70b(4, 1),
            "Llama 3.3 70B, tensor_parallel_size 4: one 4-GPU pod per replica (STRICT_PACK)"),
    Variant(EXAMPLES / "llama-70b-tp4-pp2.yaml", _llama_70b(4, 2),
            "Llama 3.3 70B, tensor_parallel_size 4 x pipeline_parallel_size 2: two 4-GPU pods per replica (PACK)"),
]

HEADER = """\
# GENERATED by scripts/render_k8s.py from serve_config.yaml: edit those, then run
#   python scripts/render_k8s.py
# (tests/unit/test_k8s_manifests.py fails while this file is stale). spec.serveConfigV2 is
# serve_config.yaml with the production overrides in OVERRIDES of scripts/render_k8s.py{extra}.
"""


class _Dumper(yaml.SafeDumper):
    """Block YAML as Kubernetes manifests are written: no anchors, indented lists, `|` for text."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _key(container: Any, part: str) -> Any:
    return int(part) if isinstance(container, list) and part.isdigit() else part


def apply_overrides(config: dict, overrides: dict[str, Any]) -> dict:
    """A copy of `config` with each dotted path set to its value (or removed, for DELETE)."""
    out = copy.deepcopy(config)
    for path, value in overrides.items():
        *parents, last = path.split(".")
        node: Any = out
        for depth, part in enumerate(parents, 1):
            key = _key(node, part)
            if isinstance(node, dict) and node.get(key) is None and value is not DELETE:
                node[key] = {}  # a mapping serve_config.yaml leaves out, e.g. autoscaling_config
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                raise KeyError(f"override {path!r}: {'.'.join(parents[:depth])} does not exist") from None
        key = _key(node, last)
        try:
            if value is DELETE:
                del node[key]
            else:
                node[key] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            raise KeyError(f"override {path!r}: {last!r} cannot be {'deleted' if value is DELETE else 'set'}") from None
    return out


def load_serve_config(path: Path = SERVE_CONFIG) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _ray_ports(*names: str) -> list[dict]:
    ports = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000}
    return [{"containerPort": ports[n], "name": n} for n in names]


def gpu_worker_group(serve_config: dict) -> dict:
    """The GPU worker pods the first model's replicas need: GPUs and CPUs per pod, pods per replica,
    and the group's pod bounds (the model's autoscaling bounds x pods per replica).

    Raises ValueError when the model's workers cannot be laid out on such pods."""
    from deployments.config import ModelConfig
    from deployments.placement import replica_placement

    model = ModelConfig.model_validate(serve_config["applications"][0]["args"]["models"][0])
    placement = replica_placement(model)
    world = placement.world_size
    gpus_per_pod = model.placement.accelerators_per_node or max(world, int(model.num_gpus) or 1)
    pods_per_replica = math.ceil(world / gpus_per_pod)
    scaling = model.deployment.autoscaling_config or {}
    replicas_min = scaling.get("min_replicas", model.deployment.num_replicas or 1)
    replicas_max = scaling.get("max_replicas", model.deployment.num_replicas or 1)
    return {
        "gpus_per_pod": gpus_per_pod,
        "cpus_per_pod": WORKER_CPUS_PER_GPU * gpus_per_pod,
        "memory": f"{WORKER_MEMORY_GI_PER_GPU * gpus_per_pod}Gi",
        "pods_per_replica": pods_per_replica,
        "min_pods": max(1, replicas_min * pods_per_replica),
        "max_pods": max(2, replicas_max * pods_per_replica),
    }


def _resources(cpus: int, memory: str, gpus: int = 0) -> dict:
    # requests == limits: Ray reads its CPU/GPU counts from the container's limits.
    amounts = {"cpu": str(cpus), "memory": memory}
    limits = dict(amounts, **({"nvidia.com/gpu": gpus} if gpus else {}))
    return {"requests": amounts, "limits": limits}


def _auth_env(serve_config: dict) -> list[dict]:
    """The environment variables that `auth` reads its plain keys from, filled from API_KEYS_SECRET.

    Every pod gets them: an ingress replica may be placed on any node. Their names are read from the
    config (defaults as in deployments/auth.py). Optional: without keys the ingress refuses to start
    with a message naming the variable, and admin keys may legitimately be absent.
    """
    auth = serve_config["applications"][0]["args"].get("auth") or {}
    names = {"api-keys": auth.get("api_keys_env", "RAYGATE_API_KEYS"),
             "admin-keys": auth.get("admin_keys_env", "RAYGATE_ADMIN_KEYS")}
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": API_KEYS_SECRET, "key": key, "optional": True}}}
            for key, name in names.items()]


def _head_probe(initial_delay_s: int, failure_threshold: int) -> dict:
    # Ray >= 2.53's dashboard-agent endpoint checks the raylet and, on the head, the GCS: what
    # KubeRay sets for these Ray versions, written out so it doesn't depend on the operator's version.
    return {
        "httpGet": {"path": "/api/healthz", "port": 52365},
        "initialDelaySeconds": initial_delay_s,
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


def rayservice(serve_config: dict) -> dict:
    """The RayService manifest serving `serve_config` (overrides already applied)."""
    serve_config_v2 = yaml.dump(serve_config, Dumper=_Dumper, sort_keys=False, width=4096)
    pods = gpu_worker_group(serve_config)
    head = {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "ray-head",
                        "image": IMAGE,
                        "ports": _ray_ports("gcs-server", "dashboard", "client", "serve"),
                        "resources": _resources(HEAD_CPUS, HEAD_MEMORY),
                        "env": _auth_env(serve_config),
                        # Liveness tolerates 10 minutes without the GCS before it restarts the
                        # head (KubeRay's default), as a restart loses every actor's state.
                        "readinessProbe": _head_probe(10, 10),
                        "livenessProbe": _head_probe(30, 120),
                    }
                ]
            }
        },
    }
    gpu_workers = {
        "groupName": "gpu",
        "minReplicas": pods["min_pods"],
        "maxReplicas": pods["max_pods"],
        "rayStartParams": {},  # KubeRay derives num-cpus/num-gpus from the container's limits
        "template": {
            "spec": {
                # Probes: KubeRay's defaults, which add the Serve proxy check (port 8000,
                # /-/healthz) to a worker's readiness probe only when none is set here.
                "containers": [
                    {
                        "name": "ray-worker",
                        "image": IMAGE,
                        "ports": _ray_ports("serve"),
                        "resources": _resources(pods["cpus_per_pod"], pods["memory"], pods["gpus_per_pod"]),
                        "env": [
                            *_auth_env(serve_config),
                            {  # for gated Hugging Face models; optional
                                "name": "HF_TOKEN",
                                "valueFrom": {"secretKeyRef": {"name": HF_SECRET, "key": "token", "optional": True}},
                            },
                        ],
                        "volumeMounts": [{"name": "hf-cache", "mountPath": HF_CACHE_MOUNT}],
                    }
                ],
                "volumes": [{"name": "hf-cache",
                             "hostPath": {"path": HF_CACHE_HOST_PATH, "type": "DirectoryOrCreate"}}],
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            }
        },
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": NAME}},
        "spec": {
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": head,
                "workerGroupSpecs": [gpu_workers],
            },
            "serveConfigV2": serve_config_v2,
        },
    }


def rendered_config(serve_config_path: Path = SERVE_CONFIG, variant: Variant = VARIANTS[0]) -> dict:
    """serve_config.yaml with OVERRIDES and then the variant's overrides applied."""
    return apply_overrides(apply_overrides(load_serve_config(serve_config_path), OVERRIDES), variant.overrides)


def render(serve_config_path: Path = SERVE_CONFIG, variant: Variant = VARIANTS[0]) -> str:
    """The text of the variant's manifest (default: k8s/rayservice.yaml) for the serve config."""
    config = rendered_config(serve_config_path, variant)
    extra = f",\n# then VARIANTS' overrides for {variant.path.name}. {variant.note}" if variant.overrides else ""
    return HEADER.format(extra=extra) + yaml.dump(rayservice(config), Dumper=_Dumper, sort_keys=False, width=4096)


def drift(serve_config_path: Path = SERVE_CONFIG, manifest_path: Path = MANIFEST,
          variant: Variant = VARIANTS[0]) -> list[str]:
    """A unified diff from the committed manifest to the rendered one; empty when they agree."""
    rendered = render(serve_config_path, variant)
    committed = Path(manifest_path).read_text() if Path(manifest_path).exists() else ""
    return list(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            fromfile=f"{manifest_path} (committed)",
            tofile=f"{manifest_path} (rendered from {serve_config_path})",
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-config", type=Path, default=SERVE_CONFIG, help="default: %(default)s")
    parser.add_argument("--out", type=Path, default=None,
                        help="the default manifest only, to this path (default: every manifest in VARIANTS)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a manifest differs from the rendering")
    args = parser.parse_args(argv)
    targets = [(args.out, VARIANTS[0])] if args.out else [(v.path, v) for v in VARIANTS]
    stale = 0
    for path, variant in targets:
        if args.check:
            diff = drift(args.serve_config, path, variant)
            if diff:
                sys.stderr.writelines(diff)
                sys.stderr.write(f"\n{path} is stale: run python scripts/render_k8s.py\n")
                stale += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(args.serve_config, variant))
        print(f"wrote {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
