"""The rewrite rules, one per module, applied by :func:`rewriter.planner.plan_query` in this order:

1. ``allow_nodes``      — every node of the tree is on the allow-list (fail closed).
2. ``resolve_table``    — one catalog table, in a dataset the principal was granted; or
   ``relation``         — joins, subqueries and CTEs: bounded sources and the rows per unit R.
3. ``resolve_columns``  — every column reference resolves to a *visible* column (``relation``
   resolves across its sources).
4. ``check_where``      — the WHERE clause only compares columns with literals of their own type.
5. ``shape_aggregates`` — protected tables: SELECT items are group keys, aggregates over bounded
   row expressions (``row_expr``) or arithmetic over aggregates; HAVING on released values.
6. ``order_limit``      — ORDER BY / LIMIT / OFFSET become post-processing over released rows.
7. ``bound_and_emit``   — warehouse SQL with per-unit contribution bounding and clamping
   (``relation.emit_relation`` for joins and subqueries).

Rules are pure: they read the sqlglot tree and return new values; none mutates its input.
"""
