"""Hypothesis strategies for SQL text, shared by the property tests of the rewriter."""

from __future__ import annotations

from hypothesis import strategies as st


def boolean_combinations(atom: st.SearchStrategy[str], max_leaves: int) -> st.SearchStrategy[str]:
    """Conditions built from ``atom`` with NOT, AND, OR and parentheses (SQL text)."""
    return st.recursive(
        atom,
        lambda inner: st.one_of(
            st.builds(lambda p: f"NOT ({p})", inner),
            st.builds(lambda p, q: f"({p}) AND ({q})", inner, inner),
            st.builds(lambda p, q: f"({p}) OR ({q})", inner, inner),
            st.builds(lambda p: f"({p})", inner),
        ),
        max_leaves=max_leaves,
    )
