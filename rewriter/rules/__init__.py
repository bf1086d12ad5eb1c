"""The rewrite rules, one per module, applied by :func:`rewriter.planner.plan_query` in this order:

1. ``allow_nodes``      — every node of the tree is on the allow-list (fail closed).
2. ``resolve_table``    — exactly one catalog table, in a dataset the principal was granted.
3. ``resolve_columns``  — every column reference resolves to a *visible* column of that table.
4. ``check_where``      — the WHERE clause only compares columns with literals of their own type.
5. ``shape_aggregates`` — protected tables: SELECT items are group keys or allowed aggregates, keys are
   dimensions; yields the output columns, group keys and measurements.
6. ``order_limit``      — ORDER BY / LIMIT / OFFSET become post-processing over released rows.
7. ``bound_and_emit``   — warehouse SQL with per-unit contribution bounding and clamping.

Rules are pure: they read the sqlglot tree and return new values; none mutates its input.
"""
