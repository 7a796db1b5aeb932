"""bench/cpu_account.py and bench/layer_alone.py's accounting: processes land in the right group,
Ray's daemons are told apart in the detailed view, and per-request figures add up by group."""

from __future__ import annotations

from bench import cpu_account, layer_alone


def test_processes_are_grouped_and_daemons_named_apart():
    raylet = "/x/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/ray/s"
    agent = "/v/bin/python -u /x/ray/dashboard/agent.py --node-ip-address=1"
    gcs = "/x/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp"
    ingress = "ray::ServeReplica:raygate:Ingress"
    assert cpu_account._group(raylet) == "ray daemons"
    assert cpu_account._detail(raylet) == "ray daemons: raylet"
    assert cpu_account._detail(agent) == "ray daemons: dashboard/agent.py"
    assert cpu_account._detail(gcs) == "ray daemons: gcs_server"
    assert cpu_account._detail(ingress) == "serve ingress"  # not a daemon: its group as is
    assert cpu_account._group("ray::ServeReplica:raygate:IngressRouter") == "serve ingress router"
    assert cpu_account._detail("/usr/bin/sshd -D") == "other: sshd"


def test_summary_sums_the_detail_into_groups_and_leaves_the_client_out():
    results = [{"ok": True, "ttft": 0.01, "e2e": 0.1, "chunks": 4} for _ in range(10)]
    cpu = {"serve ingress": 0.05, "ray daemons: raylet": 0.02, "ray daemons: gcs_server": 0.01,
           "benchmark client": 1.0}
    s = layer_alone.summarize(results, 2.0, cpu)
    assert s["cpu_ms_per_request"] == {"serve ingress": 5.0, "ray daemons": 3.0}
    assert s["cpu_ms_per_request_detail"]["ray daemons: raylet"] == 2.0
    assert abs(s["layer_cpu_ms_per_request"] - 8.0) < 1e-9
    assert abs(s["layer_cpu_ms_per_chunk"] - 2.0) < 1e-9


def test_the_serve_run_driver_is_named():
    assert cpu_account._detail("/v/bin/python /v/bin/serve run /tmp/x/serve_config.yaml") == "other: serve run"


def test_compare_does_not_charge_the_background_of_the_clients_start_up():
    from bench import compare

    # 100 requests (+ 9 warm-ups + 1) timed over 2 s of a client that ran 12 s: the ingress idles at
    # 0.05 CPU-s per second, so 10 s x 0.05 = 0.5 s of its 1.0 s were the client's start-up.
    run = {"completed": 100, "duration": 2.0, "client_wall_s": 12.0,
           "cpu_s_by_component": {"serve ingress": 1.0, "vllm worker": 3.0, "benchmark client": 2.0},
           "idle_cpu_s_per_s_by_component": {"serve ingress": 0.05, "vllm worker": 0.0}}
    assert abs(compare.layer_cpu_ms(run, warmups=9) - 500 / 110) < 1e-9
    assert abs(compare.layer_cpu_ms(run, warmups=9, raw=True) - 1000 / 110) < 1e-9
    # An idle rate above what the component used is never charged below zero.
    run["idle_cpu_s_per_s_by_component"]["serve ingress"] = 1.0
    assert compare.layer_cpu_ms(run, warmups=9) == 0.0
