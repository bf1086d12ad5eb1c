"""Docs match the code: every error code and every setting is documented."""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ERROR_TABLE
from gateway.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_error_code_is_documented() -> None:
    text = (DOCS / "errors.md").read_text()
    missing = [code for code in ERROR_TABLE if f"`{code}`" not in text]
    assert not missing, f"docs/errors.md lacks {missing}"


def test_every_error_class_has_a_code_in_the_table() -> None:
    import budgets.errors
    import budgets.ledger
    import gateway.errors
    import rewriter.errors

    classes: list[type] = []
    for module in (rewriter.errors, budgets.errors, budgets.ledger, gateway.errors):
        classes += [
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and issubclass(v, Exception)
            and v.__module__ == module.__name__
            and hasattr(v, "code")
        ]
    roots = {"sql.rejected", "budget.error"}
    unmapped = {c.code for c in classes} - set(ERROR_TABLE) - roots
    assert not unmapped, f"codes without an HTTP status / SQLSTATE: {unmapped}"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "operations.md").read_text()
    missing = [
        f"PRIVGATE_{name.upper()}"
        for name in Settings.model_fields
        if f"`PRIVGATE_{name.upper()}`" not in text
    ]
    assert not missing, f"docs/operations.md lacks {missing}"
