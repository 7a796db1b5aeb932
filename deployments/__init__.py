"""The Serve application: app.py builds the graph from config.py; ingress.py is the HTTP surface;
llm_server.py the LLM replica, which serves through the engine protocol (engine_protocol.py: vLLM in
engine.py, the stand-in in stand_in_engine.py) under engine_watchdog.py; admission.py, auth.py,
tenants.py and rate_limits.py decide who gets in; front_door.py and haproxy_launcher.py shape
Serve's HAProxy. See docs/architecture.md for the request's path.
"""
