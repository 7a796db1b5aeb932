"""Autoscaling on queue length: a load step from 1 to 16 concurrent streams, then nothing.

    python -m bench.autoscaling                  # ~5 minutes; PNG and JSON in bench/results/

One `serve run serve_config.yaml` (cache off) with the LLM deployment allowed 1..2 replicas under
raygate's queue-length policy (deployments/autoscaling.py) and short delays. Phases: `--idle-s` with
1 stream, `--load-s` with `--streams` concurrent streams, then `--cooldown-s` with none. Every second
it samples the deployment's running/starting replicas and status (Serve's status, from an attached
driver) and the queue the policy sees (engine running/waiting per replica, /admin/models).
Reported: when Serve first showed UPSCALING (the decision) and when the second replica ran, measured from the
load step, against the configured upscale delay plus the replica's start time; when it went back
to one replica after the load stopped. A table, JSON and a PNG plot of replicas and queue over time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import threading
import time
from pathlib import Path
from typing import Optional

from bench.report import add_out_arg, write_result
from bench.servers import REPO, Raygate, add_model_arg, config_for_model, free_port

POLICY = {"policy_function": "deployments.autoscaling:QueueLengthPolicy",
          "policy_kwargs": {"queue_weight": 2.0, "floor": 1}}


def _autoscaling(args) -> dict:
    return {"min_replicas": 1, "max_replicas": args.max_replicas, "initial_replicas": 1,
            "target_ongoing_requests": args.target, "upscale_delay_s": args.upscale_delay_s,
            "downscale_delay_s": args.downscale_delay_s, "metrics_interval_s": args.metrics_interval_s,
            "look_back_period_s": max(10.0, 2 * args.metrics_interval_s), "policy": POLICY}


async def _streams(url: str, model: str, concurrency: int, until: float, max_tokens: int, counts: dict,
                   first_tokens: Optional[list] = None) -> None:
    """`concurrency` clients streaming one request after another until `until`; `first_tokens`
    collects when each request's first chunk arrived (its first token was generated: it runs)."""
    import httpx

    body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "stream": True, "cache": {"mode": "off"},
            "messages": [{"role": "user", "content": "Tell a long story about a lighthouse keeper."}]}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            while time.monotonic() < until:
                try:
                    async with client.stream("POST", url, json=body) as r:
                        first = True
                        async for line in r.aiter_lines():
                            if first and line and first_tokens is not None:
                                first_tokens.append(time.monotonic())
                            first = first and not line
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1
                except httpx.HTTPError as e:
                    counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))


class Sampler(threading.Thread):
    """Once a second: Serve's replica counts for the LLM deployment and the engines' queues."""

    def __init__(self, base_url: str, deployment: str, model: str, t0: float):
        super().__init__(daemon=True)
        self.base_url, self.deployment, self.model, self.t0 = base_url, deployment, model, t0
        self.samples: list[dict] = []
        self.stop_event = threading.Event()

    def _replicas(self) -> dict:
        from ray import serve

        status = serve.status().applications["raygate"].deployments[self.deployment]
        states = {str(k.value if hasattr(k, "value") else k): v for k, v in status.replica_states.items()}
        return {"running": states.get("RUNNING", 0), "starting": states.get("STARTING", 0),
                "stopping": states.get("STOPPING", 0), "status": str(status.status)}

    def _queue(self) -> Optional[dict]:
        import httpx

        try:
            models = httpx.get(self.base_url + "/admin/models", timeout=5).json()["models"][self.model]
        except Exception:  # noqa: BLE001 - a loaded ingress may not answer in time: a gap in the plot
            return None
        replicas = [r for r in models["replicas"] if "running" in r]
        return {"engine_running": sum(r["running"] for r in replicas),
                "engine_waiting": sum(r["waiting"] for r in replicas),
                "gate_queued": sum(models["admission"]["queued"].values())}

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.monotonic() - self.t0
            sample = {"t": round(t, 1)}
            try:
                sample.update(self._replicas())
            except Exception as e:  # noqa: BLE001
                sample["error"] = repr(e)
            sample.update(self._queue() or {})
            self.samples.append(sample)
            self.stop_event.wait(max(0.0, 1.0 - (time.monotonic() - self.t0 - t)))


_LOG_LINE = re.compile(r"^\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) controller \d+ -- (.*)$")


def controller_events(log_dir: Path, deployment: str) -> dict[str, list[float]]:
    """Wall-clock times of the controller's scale-up decisions and replica starts for one deployment.

    Serve's status, sampled once a second, says when a decision was visible; the controller's log
    says when it was taken (to the millisecond), which splits the delay from the replica's start."""
    upscale = re.compile(rf"Upscaling Deployment\(name='{re.escape(deployment)}'")
    started = re.compile(rf"Replica\(id='[^']+', deployment='{re.escape(deployment)}'.* started successfully")
    events: dict[str, list[float]] = {"upscale": [], "replica_started": []}
    for path in sorted(log_dir.glob("controller_*.log")):
        for line in path.read_text(errors="replace").splitlines():
            m = _LOG_LINE.match(line)
            if not m:
                continue
            ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if upscale.search(m.group(2)):
                events["upscale"].append(ts)
            elif started.search(m.group(2)):
                events["replica_started"].append(ts)
    return events


def _first(samples: list[dict], after: float, cond) -> Optional[float]:
    for s in samples:
        if s["t"] >= after and cond(s):
            return s["t"]
    return None


def plot(samples: list[dict], phases: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.step(t, [s.get("running", 0) for s in samples], where="post", label="running replicas", lw=2)
    ax.step(t, [(s.get("running", 0) + s.get("starting", 0)) for s in samples], where="post",
            label="running + starting", ls="--")
    ax.set_xlabel("seconds")
    ax.set_ylabel("replicas")
    ax2 = ax.twinx()
    qt = [s["t"] for s in samples if "engine_running" in s]
    ax2.plot(qt, [s["engine_running"] + s["engine_waiting"] + s["gate_queued"] for s in samples
                  if "engine_running" in s], color="tab:red", alpha=0.6, label="requests at engines + gate")
    ax2.plot(qt, [s["engine_waiting"] + s["gate_queued"] for s in samples if "engine_running" in s],
             color="tab:orange", alpha=0.8, label="waiting (engines + gate)")
    ax2.set_ylabel("requests")
    for name, (start, end) in phases.items():
        ax.axvspan(start, end, alpha=0.08, color="gray" if name != "load" else "tab:green")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="upper right", fontsize=8)
    ax.set_title("raygate queue-length autoscaling: load step 1 -> 16 streams -> 0")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    add_model_arg(p, default="builtin:tiny-llama")  # the serving layer's cost, not the model's
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--idle-s", type=float, default=20)
    p.add_argument("--load-s", type=float, default=90)
    p.add_argument("--cooldown-s", type=float, default=120)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument("--target", type=float, default=4, help="target_ongoing_requests")
    p.add_argument("--upscale-delay-s", type=float, default=5)
    p.add_argument("--downscale-delay-s", type=float, default=30)
    p.add_argument("--metrics-interval-s", type=float, default=0.5, help="how often load is reported to Serve")
    add_out_arg(p, "autoscaling")
    args = p.parse_args(argv)
    args.config = config_for_model(Path(args.config), args.model)
    import ray
    import yaml

    from deployments.config import AppConfig, llm_deployment_name

    app_args = yaml.safe_load(args.config.read_text())["applications"][0]["args"]
    model = AppConfig.model_validate(app_args).models[0].name
    overrides = {"cache.enabled": False, "models.0.num_cpus": 0.5,  # Ray reservations: 2 replicas on 2 cores
                 "models.0.deployment.num_replicas": None, "models.0.deployment.autoscaling_config": _autoscaling(args),
                 "models.0.admission.max_inflight_per_replica": 256,
                 # The model's own LLM deployment, whose replicas the sampler counts (a colocated model's
                 # replicas are the ingress's: tests/integration/test_colocated.py covers that scaling).
                 "ingress.colocate": False}
    srv = Raygate(args.config, free_port(), REPO / "bench" / "results" / "logs", label="raygate-autoscaling",
                  overrides=overrides)
    print("starting raygate ...", flush=True)
    srv.start()
    url = srv.base_url + "/v1/chat/completions"
    counts: dict = {}
    try:
        ray.init(address="auto", log_to_driver=False)
        t0, t0_wall = time.monotonic(), time.time()
        sampler = Sampler(srv.base_url, llm_deployment_name(model), model, t0)
        sampler.start()
        asyncio.run(_streams(url, model, 1, t0 + args.idle_s, args.max_tokens, counts))
        load_start = time.monotonic() - t0
        first_tokens: list[float] = []
        asyncio.run(_streams(url, model, args.streams, t0 + args.idle_s + args.load_s, args.max_tokens, counts,
                             first_tokens))
        load_end = time.monotonic() - t0
        time.sleep(args.cooldown_s)
        sampler.stop_event.set()
        sampler.join(timeout=10)
        events = controller_events(Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve",
                                   llm_deployment_name(model))
    finally:
        ray.shutdown()
        srv.stop()
    samples = sampler.samples
    # The controller's log times the decision and the replica's start to the millisecond; the
    # once-a-second samples are the fallback (and the plot).
    logged = {k: [round(ts - t0_wall, 3) for ts in v if ts - t0_wall >= load_start] for k, v in events.items()}
    decided = (logged["upscale"] or [None])[0]
    if decided is None:
        decided = _first(samples, load_start, lambda s: "UPSCALING" in s.get("status", "")
                         or s.get("running", 0) + s.get("starting", 0) >= 2)
    running2 = (logged["replica_started"] or [None])[0]
    if running2 is None:
        running2 = _first(samples, load_start, lambda s: s.get("running", 0) >= 2)
    # When the load was at the deployment: the policy wants a second replica once more than
    # `target` requests run, so the moment the (target+1)-th stream had its first token. Between
    # the client's step and then, requests cross HAProxy and the ingress on a loaded host.
    need = int(args.target) + 1
    at_server = (sorted(first_tokens)[need - 1] - t0) if len(first_tokens) >= need else None
    detection = None if decided is None else decided - load_start - args.upscale_delay_s
    autoscaler_lag = None if decided is None or at_server is None else decided - at_server - args.upscale_delay_s
    target = None if decided is None or running2 is None else args.upscale_delay_s + (running2 - decided)
    back = _first(samples, load_end, lambda s: s.get("running", 0) + s.get("starting", 0) <= 1
                  and s.get("stopping", 0) == 0)
    peak = max((s.get("running", 0) for s in samples), default=0)
    results = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "autoscaling_config": _autoscaling(args),
        "phases_s": {"idle": [0, load_start], "load": [load_start, load_end], "cooldown": [load_end, samples[-1]["t"]]},
        "scale_up_decision_s": None if decided is None else round(decided - load_start, 1),
        "second_replica_running_s": None if running2 is None else round(running2 - load_start, 1),
        "replica_start_s": None if decided is None or running2 is None else round(running2 - decided, 1),
        "detection_lag_s": None if detection is None else round(detection, 1),
        "load_at_deployment_s": None if at_server is None else round(at_server - load_start, 2),
        "autoscaler_lag_s": None if autoscaler_lag is None else round(autoscaler_lag, 2),
        "second_replica_running_after_load_at_deployment_s":
            None if running2 is None or at_server is None else round(running2 - at_server, 1),
        "target_s": None if target is None else round(target, 1),
        # The target is the autoscaler's: delay + start after the load is at the deployment. From the
        # client's step it also includes the requests' transit to the engine (reported, not hidden).
        "met": None if target is None or at_server is None else bool(running2 - at_server <= target + 0.05),
        "met_from_client_step": None if target is None else bool(running2 - load_start <= target + 0.05),
        "timed_from": "controller log" if logged["upscale"] and logged["replica_started"] else "samples",
        "controller_events_s": logged,
        "back_to_one_after_load_s": None if back is None else round(back - load_end, 1),
        "peak_running_replicas": peak,
        "responses": {str(k): v for k, v in counts.items()},
        "samples": samples,
    }
    png = args.out.with_suffix(".png")
    plot(samples, results["phases_s"], png)
    print(f"\n{'':<44}{'measured':>10}   target")
    print(f"{'replicas at peak':<44}{peak:>10}   >= 2")
    print(f"{'load step -> scale-up decision (s)':<44}{str(results['scale_up_decision_s']):>10}   "
          f"<= upscale delay {args.upscale_delay_s:g} s + metrics interval {args.metrics_interval_s:g} s")
    print(f"{'decision -> 2nd replica running (s)':<44}{str(results['replica_start_s']):>10}   replica start time")
    print(f"{'load step -> 2nd replica running (s)':<44}{str(results['second_replica_running_s']):>10}   "
          f"<= delay + start = {results['target_s']} s from the client's step: "
          f"{'met' if results['met_from_client_step'] else 'MISSED'}")
    print(f"{'  of which detection lag (s)':<44}{str(results['detection_lag_s']):>10}   "
          f"(decision - load step - upscale delay; timed from the {results['timed_from']})")
    print(f"{'  load step -> load at the deployment (s)':<44}{str(results['load_at_deployment_s']):>10}   "
          f"(the {need}th stream's first token: more than target={args.target:g} running)")
    print(f"{'  autoscaler lag after that (s)':<44}{str(results['autoscaler_lag_s']):>10}   "
          f"(decision - load at the deployment - upscale delay)")
    print(f"{'load at deployment -> 2nd replica running (s)':<44}"
          f"{str(results['second_replica_running_after_load_at_deployment_s']):>10}   "
          f"<= delay + start = {results['target_s']} s: {'met' if results['met'] else 'MISSED'}")
    print(f"{'load stop -> back to 1 replica (s)':<44}{str(results['back_to_one_after_load_s']):>10}   "
          f"downscale delay {args.downscale_delay_s:g} s + drain")
    print(f"responses: {results['responses']}")
    print(f"\n{'t (s)':>6} {'running':>8} {'starting':>9} {'engine run':>11} {'waiting':>8}")
    for s in samples[:: max(1, len(samples) // 40)]:
        print(f"{s['t']:>6.0f} {s.get('running', '-'):>8} {s.get('starting', '-'):>9} "
              f"{s.get('engine_running', '-'):>11} {s.get('engine_waiting', '-'):>8}")
    write_result(args.out, results, "bench.autoscaling", argv)
    print(f"plot: {png}")
    return results


if __name__ == "__main__":
    main()
