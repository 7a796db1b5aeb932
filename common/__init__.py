"""What deployments/, cache/ and router/ all use: OpenAI-style errors, Serve deployment options, the
process reaper and the request kind. It imports none of them, so the layers above never import each other upward
(tests/unit/test_import_graph.py checks it)."""
