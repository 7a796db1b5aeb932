"""Replica choice for the LLM deployments: prefix-cache, session and load aware; see docs/architecture.md.

policy.py decides (prefix match over prefix_index.py's tree of prompt blocks, session affinity, the
two-choices fallback under imbalance); request_router.py is the Serve `RequestRouter` that runs the
policy inside every handle's routing loop (and skips replicas that report themselves unhealthy);
prompt_text.py turns a request into the text the policy matches; registry.py lets the ingress find
its process's router; metrics.py counts the decisions.
"""
