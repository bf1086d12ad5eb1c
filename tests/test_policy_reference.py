"""docs/policy.md's field tables are the ones generated from the pydantic models: no drift."""

from __future__ import annotations

import difflib
import doctest
import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel

import gateway.policy_reference
import rewriter.policy
from gateway.policy_reference import (
    BEGIN,
    END,
    MODELS,
    REGENERATE,
    generated_block,
    main,
    render,
    render_model,
    splice,
)

POLICY_MD = Path(__file__).resolve().parent.parent / "docs" / "policy.md"


def test_docs_policy_md_matches_the_models() -> None:
    documented = generated_block(POLICY_MD.read_text())
    expected = render()
    if documented != expected:
        diff = "".join(
            difflib.unified_diff(
                documented.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/policy.md",
                "render()",
            )
        )
        pytest.fail(
            f"docs/policy.md's generated field reference is stale; regenerate it with\n"
            f"    {REGENERATE}\n{diff}"
        )


def test_every_policy_model_is_in_the_reference() -> None:
    models = {
        v
        for v in vars(rewriter.policy).values()
        if inspect.isclass(v)
        and issubclass(v, BaseModel)
        and v.__module__ == "rewriter.policy"
        and not v.__name__.startswith("_")
    }
    assert models == set(MODELS), f"add to or remove from MODELS: {models ^ set(MODELS)}"


def test_every_field_has_a_description() -> None:
    missing = [
        f"{m.__name__}.{name}"
        for m in MODELS
        for name, field in m.model_fields.items()
        if not field.description
    ]
    assert not missing, f"add description= to {missing} in rewriter/policy.py"


def test_a_field_without_description_is_refused() -> None:
    class Bare(BaseModel):
        x: int = 1

    with pytest.raises(ValueError, match=r"Bare\.x has no description"):
        render_model(Bare)


def test_an_unknown_constraint_is_refused() -> None:
    from pydantic import Field

    class Odd(BaseModel):
        x: str = Field(default="", max_length=3, description="d")

    with pytest.raises(TypeError, match="no wording for the constraint"):
        render_model(Odd)


def test_the_reference_shows_names_types_defaults_and_constraints() -> None:
    text = render()
    assert "| `class` | `identifier` \\| `blocked` \\|" in text  # the alias, not class_
    assert "| `epsilon` | float | `0.5` | > 0, ≤ 100 |" in text
    assert (
        "| `per_principal` | [`BudgetLimit`](#budgetlimit) | `{epsilon: 10, delta: 1e-5}` |" in text
    )
    assert "| `defaults` | [`Defaults`](#defaults) | all defaults |" in text
    assert "| `privacy_unit` | string | required | min length 1 |" in text


def test_splice_replaces_only_the_block() -> None:
    text = f"# Title\n\nbefore\n\n{BEGIN}\nold tables\n{END}\n\nafter\n"
    spliced = splice(text)
    assert spliced.startswith(f"# Title\n\nbefore\n\n{BEGIN}\n\n")
    assert spliced.endswith(f"\n{END}\n\nafter\n")
    assert "old tables" not in spliced
    assert generated_block(spliced) == render()
    assert splice(spliced) == spliced
    with pytest.raises(ValueError, match="missing"):
        splice("no markers")


def test_main_prints_or_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out == render()
    doc = tmp_path / "policy.md"
    doc.write_text(f"intro\n{BEGIN}\n{END}\n")
    assert main(["--write", str(doc)]) == 0
    assert generated_block(doc.read_text()) == render()
    assert main(["--bogus"]) == 2


def test_doctests() -> None:
    assert doctest.testmod(gateway.policy_reference).failed == 0
