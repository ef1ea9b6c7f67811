"""Security tests: each reproduces an attack on the agent (issue 10)."""
