"""The semantic cache (exact and meaning-level hits on Redis/Valkey); see docs/architecture.md.

Empty until the semantic-cache issue lands: every request goes to the model.
"""
