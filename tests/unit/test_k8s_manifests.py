"""The Kubernetes manifests in k8s/ are current, well-formed, and consistent with each other.

Why: nothing here runs against a cluster, so a stale serveConfigV2, a misspelled RayService field or
a Redis Service on the wrong port would only show up at `kubectl apply` or as a crash loop. The
RayService is checked against KubeRay's own CRD schema (k8s/crd/, kept as data), the application
inside it against Ray Serve's and raygate's schemas, and the resources against each other.
"""

import copy
import importlib.util
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import ray
import yaml

from deployments.config import AppConfig

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1 MB of YAML


def _load_script():
    spec = importlib.util.spec_from_file_location("render_k8s", REPO / "scripts" / "render_k8s.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


render_k8s = _load_script()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((K8S / "rayservice.yaml").read_text())


@pytest.fixture(scope="module")
def serve_config(manifest) -> dict:
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    crd = yaml.load((K8S / "crd" / "ray.io_rayservices.yaml").read_text(), Loader=_Loader)
    assert crd["spec"]["group"] == "ray.io" and crd["spec"]["names"]["kind"] == "RayService"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Keys of `value` that `schema` does not declare, the way `kubectl apply` (strict field
    validation) rejects them: structural CRD schemas list `properties` without
    `additionalProperties: false`, so JSON Schema validation alone accepts any misspelled key."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                found += unknown_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, f"{path}.{key}")
            elif props is not None and extra is None:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def schema_errors(manifest: dict, schema: dict) -> list[str]:
    """Everything the API server's schema validation would refuse (CEL rules aside).

    OpenAPI v3.0 schemas are JSON Schema draft 4 in substance: `x-kubernetes-*` keys are extensions
    that jsonschema ignores, and int-or-string fields spell out their `anyOf` of both types."""
    validator = jsonschema.Draft4Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]
    return errors + [f"{field}: unknown field" for field in unknown_fields(manifest, schema)]


def _groups(manifest: dict):
    cluster = manifest["spec"]["rayClusterConfig"]
    return cluster["headGroupSpec"], cluster["workerGroupSpecs"]


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first one


# (1) generated, not edited


@pytest.mark.parametrize("variant", render_k8s.VARIANTS, ids=lambda v: v.path.name)
def test_committed_manifest_is_what_the_script_renders(variant):
    diff = render_k8s.drift(manifest_path=variant.path, variant=variant)
    assert not diff, f"{variant.path} is stale; run python scripts/render_k8s.py\n" + "".join(diff)


def test_check_mode_fails_on_a_stale_manifest(tmp_path):
    stale = tmp_path / "rayservice.yaml"
    stale.write_text((K8S / "rayservice.yaml").read_text().replace("maxReplicas: 4", "maxReplicas: 5"))
    assert render_k8s.main(["--check", "--out", str(stale)]) == 1
    assert render_k8s.main(["--check"]) == 0


def test_overrides_that_no_longer_apply_fail_loudly():
    config = {"a": {"b": 1}, "items": [{"c": 2}]}
    out = render_k8s.apply_overrides(
        config, {"a.b": render_k8s.DELETE, "items.0.c": 3, "a.new.leaf": True}
    )
    assert out == {"a": {"new": {"leaf": True}}, "items": [{"c": 3}]} and config["a"] == {"b": 1}
    with pytest.raises(KeyError, match="a.gone"):
        render_k8s.apply_overrides(config, {"a.gone": render_k8s.DELETE})
    with pytest.raises(KeyError, match="items.1"):
        render_k8s.apply_overrides(config, {"items.1.c": 3})


# (2) the RayService against KubeRay's CRD schema


def test_rayservice_matches_the_crd_schema(manifest, crd_schema):
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert schema_errors(manifest, crd_schema) == []
    assert "serveConfigV2: |" in (K8S / "rayservice.yaml").read_text()  # readable block text


def _rename_head_group(m):
    cluster = m["spec"]["rayClusterConfig"]
    cluster["headGroupSpecs"] = cluster.pop("headGroupSpec")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_rename_head_group, "headGroupSpecs: unknown field"),
        (lambda m: _container(_groups(m)[0])["readinessProbe"]["httpGet"].update(paths="/"),
         "httpGet.paths: unknown field"),
        (lambda m: _groups(m)[1][0].update(maxReplicas="4"), "'4' is not of type 'integer'"),
        (lambda m: _groups(m)[0]["rayStartParams"].update({"num-gpus": 0}), "0 is not of type 'string'"),
        (lambda m: _groups(m)[1][0].pop("groupName"), "'groupName' is a required property"),
    ],
    ids=["misspelled-field", "nested-unknown-field", "wrong-type", "rayStartParams-not-string", "missing-required"],
)
def test_schema_check_catches_mistakes(manifest, crd_schema, mutate, expected):
    broken = copy.deepcopy(manifest)
    mutate(broken)
    errors = schema_errors(broken, crd_schema)
    assert any(expected in e for e in errors), errors


# (3) the application inside it


def test_serve_config_v2_is_a_valid_serve_application(serve_config):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_config)
    assert schema.applications[0].import_path == "deployments.app:build_app"
    args = AppConfig.model_validate(serve_config["applications"][0]["args"])
    llm = args.models[0]
    assert llm.num_gpus >= 1 and not llm.engine_args.enforce_eager
    assert "VLLM_CPU_KVCACHE_SPACE" not in llm.env
    assert llm.deployment.num_replicas is None and llm.deployment.autoscaling_config["min_replicas"] >= 1
    assert args.cache.redis_url == render_k8s.REDIS_URL


def test_auth_is_on_and_every_pod_gets_the_key_variables_it_reads(manifest, serve_config):
    auth = AppConfig.model_validate(serve_config["applications"][0]["args"]).auth
    assert auth.enabled
    head, workers = _groups(manifest)
    for group in (head, *workers):  # an ingress replica may run on any node
        env = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in _container(group)["env"] if "valueFrom" in e}
        assert env[auth.api_keys_env] == env[auth.admin_keys_env] == render_k8s.API_KEYS_SECRET


def test_serve_config_v2_differs_from_serve_config_only_by_the_overrides(serve_config):
    repo_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    assert render_k8s.apply_overrides(repo_config, render_k8s.OVERRIDES) == serve_config


# (4) the cluster: GPUs only on workers, autoscaling, versions


def test_gpus_are_on_the_worker_group_only_and_autoscaling_is_on(manifest, serve_config):
    cluster = manifest["spec"]["rayClusterConfig"]
    head, workers = _groups(manifest)
    assert cluster["enableInTreeAutoscaling"] is True
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_resources = _container(head)["resources"]
    assert all("nvidia.com/gpu" not in head_resources.get(k, {}) for k in ("requests", "limits"))

    gpu_groups = [g for g in workers if int(_container(g)["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for group in gpu_groups:
        assert 1 <= group["minReplicas"] < group["maxReplicas"]

    # Serve may not ask for more GPUs than Ray's autoscaler can add, nor for more CPUs than a pod has.
    llm = AppConfig.model_validate(serve_config["applications"][0]["args"]).models[0]
    gpus = sum(g["maxReplicas"] * int(_container(g)["resources"]["limits"]["nvidia.com/gpu"]) for g in gpu_groups)
    assert llm.deployment.autoscaling_config["max_replicas"] * llm.num_gpus <= gpus
    assert all(llm.num_cpus < float(_container(g)["resources"]["limits"]["cpu"]) for g in gpu_groups)


def test_ray_version_and_serve_port_agree_everywhere(manifest, serve_config):
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    base = re.search(r"^FROM\s+(\S+)", (K8S / "Dockerfile").read_text(), re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-") and base.endswith("-gpu")
    head, workers = _groups(manifest)
    for group in (head, *workers):
        container = _container(group)
        assert container["image"] == render_k8s.IMAGE
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == serve_config["http_options"]["port"]  # KubeRay finds Serve by this name


# (5) Redis


def test_redis_service_matches_the_cache_url(serve_config):
    docs = [d for d in yaml.safe_load_all((K8S / "redis.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    deployment, service = by_kind["Deployment"], by_kind["Service"]
    url = urlparse(serve_config["applications"][0]["args"]["cache"]["redis_url"])
    assert url.scheme == "redis" and service["metadata"]["name"] == url.hostname == "raygate-redis"
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (url.port or 6379)]

    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (redis,) = pod["spec"]["containers"]
    assert any(port["targetPort"] in (p["name"], p["containerPort"]) for p in redis["ports"])

    args = redis["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"  # every cache entry has a TTL
    assert "--maxmemory" in args and redis["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]


# (6) every manifest, the 70B examples included: the GPU pods follow tensor x pipeline parallelism


def _variant(variant) -> tuple[dict, dict]:
    m = yaml.safe_load(variant.path.read_text())
    return m, yaml.safe_load(m["spec"]["serveConfigV2"])


@pytest.mark.parametrize("variant", render_k8s.VARIANTS, ids=lambda v: v.path.name)
def test_every_manifest_validates_against_the_crd_and_serves_schema(variant, crd_schema):
    from ray.serve.schema import ServeDeploySchema

    m, config = _variant(variant)
    assert schema_errors(m, crd_schema) == []
    ServeDeploySchema.model_validate(config)
    AppConfig.model_validate(config["applications"][0]["args"])
    assert render_k8s.apply_overrides(render_k8s.apply_overrides(
        yaml.safe_load((REPO / "serve_config.yaml").read_text()), render_k8s.OVERRIDES), variant.overrides) == config


def test_the_70b_examples_are_tensor_4_and_tensor_4_by_pipeline_2():
    sizes = []
    for variant in render_k8s.VARIANTS[1:]:
        llm = AppConfig.model_validate(_variant(variant)[1]["applications"][0]["args"]).models[0]
        assert "70B" in llm.model
        sizes.append((llm.engine_args.tensor_parallel_size, llm.engine_args.pipeline_parallel_size))
    assert sizes == [(4, 1), (4, 2)]


def _pack(bundles: list[dict], pods: int, gpus: int, cpus: float) -> list[int] | None:
    """First-fit of the placement group's bundles into `pods` empty pods (what PACK / STRICT_PACK do
    on an otherwise empty group); the pod of each bundle, or None when they do not fit."""
    free = [{"GPU": float(gpus), "CPU": cpus} for _ in range(pods)]
    where = []
    for bundle in bundles:
        pod = next((i for i, f in enumerate(free) if all(f.get(k, 0) >= v for k, v in bundle.items())), None)
        if pod is None:
            return None
        for k, v in bundle.items():
            free[pod][k] -= v
        where.append(pod)
    return where


@pytest.mark.parametrize("variant", render_k8s.VARIANTS, ids=lambda v: v.path.name)
def test_the_gpu_worker_group_follows_tensor_by_pipeline_parallelism(variant):
    from deployments.placement import replica_placement

    m, config = _variant(variant)
    llm = AppConfig.model_validate(config["applications"][0]["args"]).models[0]
    (group,) = [g for g in _groups(m)[1] if g["groupName"] == "gpu"]
    limits = _container(group)["resources"]["limits"]
    gpus, cpus = int(limits["nvidia.com/gpu"]), float(limits["cpu"])
    ea = llm.engine_args
    world = ea.tensor_parallel_size * ea.pipeline_parallel_size
    assert ea.tensor_parallel_size <= gpus, "a tensor-parallel group never spans pods"
    pods_per_replica = -(-world // gpus)
    scaling = llm.deployment.autoscaling_config
    assert group["maxReplicas"] >= scaling["max_replicas"] * pods_per_replica
    assert group["minReplicas"] >= scaling["min_replicas"] * pods_per_replica
    placement = replica_placement(llm)
    if world == 1:
        assert placement.bundles is None and llm.num_gpus <= gpus and llm.num_cpus < cpus
        return
    assert llm.num_gpus == world and placement.executor == "ray"
    assert placement.strategy == ("STRICT_PACK" if pods_per_replica == 1 else "PACK")
    # The replica's bundles fit the pods of one replica, each pod using all its GPUs.
    where = _pack(placement.bundles, pods_per_replica, gpus, cpus)
    assert where is not None, (placement.bundles, gpus, cpus)
    assert sorted(set(where)) == list(range(pods_per_replica))


@pytest.mark.parametrize("variant", render_k8s.VARIANTS, ids=lambda v: v.path.name)
def test_hub_downloads_go_to_the_nodes_cache_volume_with_the_token_from_a_secret(variant):
    m, config = _variant(variant)
    llm = AppConfig.model_validate(config["applications"][0]["args"]).models[0]
    (group,) = [g for g in _groups(m)[1] if g["groupName"] == "gpu"]
    pod = group["template"]["spec"]
    mounts = {v["name"]: v["mountPath"] for v in _container(group)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert llm.loading.cache_dir == mounts["hf-cache"]
    assert volumes["hf-cache"]["hostPath"]["path"] == render_k8s.HF_CACHE_HOST_PATH  # one cache per node
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}) for e in _container(group)["env"]}
    assert env["HF_TOKEN"]["name"] == render_k8s.HF_SECRET
    assert "HF_TOKEN" not in m["spec"]["serveConfigV2"]  # never in the config, which Serve shows


@pytest.mark.parametrize("variant", [None, *render_k8s.VARIANTS], ids=lambda v: v.path.name if v else "serve_config")
def test_the_controller_lets_replicas_load_for_their_startup_allowance(variant):
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text()) if variant is None else _variant(variant)[1]
    limit = float(config["controller_options"]["runtime_env"]["env_vars"]["RAY_SERVE_SLOW_STARTUP_WARNING_S"])
    models = AppConfig.model_validate(config["applications"][0]["args"]).models
    assert all(m.loading.startup_allowance_s <= limit for m in models)
