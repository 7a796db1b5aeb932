"""Replica choice for the LLM deployments (prefix-cache and load aware); see docs/architecture.md.

Empty until the routing issue lands: Serve's default power-of-two-choices router is in use.
"""
