"""Pure SQL logic: parse, qualify, police and rewrite one statement into an immutable QueryPlan.

Nothing in this package performs I/O; see the import-linter contracts in pyproject.toml.
"""
