"""The Serve application: app.py builds the graph from config.py; ingress.py is the HTTP surface;
llm_server.py the LLM replica, which serves through the engine protocol (engine_protocol.py: vLLM in
engine.py, the stand-in in stand_in_engine.py) under engine_watchdog.py; admission.py, auth.py,
tenants.py and rate_limits.py decide who gets in; front_door.py and haproxy_launcher.py shape
Serve's HAProxy. request_view.py, request_parsing.py and request_controls.py decode a request once;
model_call.py takes it to a replica (token charge, admission slot, retries, relay, write-back); sse.py
and stream_coalescing.py shape streams; autoscaling.py, placement.py and serving_metrics.py size,
place and count replicas; builtin_models.py, demo_model.py and smollm2_model.py build the built-in
models offline. See docs/architecture.md for the request's path.
"""
