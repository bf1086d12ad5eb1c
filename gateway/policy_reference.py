"""The policy field reference, generated from the pydantic models in ``rewriter.policy``.

``render()`` returns the Markdown tables (one section per model: field, type, default,
constraint, meaning) that ``docs/policy.md`` holds between :data:`BEGIN` and :data:`END`;
``tests/test_policy_reference.py`` fails when the two drift apart. Regenerate with::

    python -m gateway.policy_reference --write docs/policy.md

Without ``--write`` the reference is printed to stdout.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rewriter.policy import (
    BudgetLimit,
    ColumnPolicy,
    DatasetBudget,
    DatasetPolicy,
    Defaults,
    Policy,
    PrincipalPolicy,
    QueryMax,
    Scalar,
    TablePolicy,
)

MODELS: tuple[type[BaseModel], ...] = (
    Policy,
    DatasetPolicy,
    Defaults,
    DatasetBudget,
    BudgetLimit,
    QueryMax,
    TablePolicy,
    ColumnPolicy,
    PrincipalPolicy,
)
"""The models of the reference, in the order of the file's nesting."""

BEGIN = "<!-- generated:begin (python -m gateway.policy_reference --write docs/policy.md) -->"
END = "<!-- generated:end -->"
REGENERATE = "python -m gateway.policy_reference --write docs/policy.md"

_SCALAR_NAMES = {str: "string", int: "int", float: "float", bool: "bool"}


def type_text(annotation: Any) -> str:
    """A field type in words, with links to the models' sections.

    >>> type_text(dict[str, TablePolicy])
    'map name → [`TablePolicy`](#tablepolicy)'
    >>> type_text(tuple[float, float] | None), type_text(Literal["a", "b"])
    ('`[float, float]`, or null', '`a` \\\\| `b`')
    """
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return type_text(args[0])
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if annotation == Scalar:
            return "string/int/float/bool"
        if len(rest) == 1 and len(args) == 2:
            return f"{type_text(rest[0])}, or null"
        return " or ".join(type_text(a) for a in rest) + (
            ", or null" if len(rest) < len(args) else ""
        )
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is dict:
        return f"map name → {type_text(args[1])}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_plural(type_text(args[0]))}"
        return "`[" + ", ".join(type_text(a) for a in args) + "]`"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[`{annotation.__name__}`](#{annotation.__name__.lower()})"
    if annotation in _SCALAR_NAMES:
        return _SCALAR_NAMES[annotation]
    raise TypeError(f"no wording for the type {annotation!r}: extend type_text")


def _plural(text: str) -> str:
    return text if text.endswith("/bool") else text + "s"


def _number(value: float) -> str:
    """A number as the YAML in the docs writes it.

    >>> _number(1e-07), _number(0.5), _number(1_000_000), _number(0.0)
    ('1e-7', '0.5', '1 000 000', '0')
    """
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) or float(value).is_integer():
        n = int(value)
        return f"{n:,}".replace(",", " ") if abs(n) >= 10_000 else str(n)
    text = repr(float(value))
    return re.sub(r"e([-+])0*(\d)", lambda m: f"e{m[1].lstrip('+')}{m[2]}", text)


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def default_text(field: FieldInfo) -> str:
    """A field's default: ``required``, a value, or ``all defaults`` for a nested model."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, BaseModel):
        explicit = value.model_dump(exclude_unset=True, by_alias=True)
        return "all defaults" if not explicit else f"`{_value(explicit)}`"
    return f"`{_value(value)}`"


_BOUNDS = (
    (annotated_types.Gt, "> {}"),
    (annotated_types.Ge, "≥ {}"),
    (annotated_types.Lt, "< {}"),
    (annotated_types.Le, "≤ {}"),
)


def constraint_text(field: FieldInfo) -> str:
    """A field's numeric and length constraints, e.g. ``> 0, ≤ 100``.

    Raises:
        TypeError: a constraint this function cannot word (extend it, or the reference lies).
    """
    out = []
    for meta in field.metadata:
        form = next((f for kind, f in _BOUNDS if isinstance(meta, kind)), None)
        if form is not None:
            out.append(form.format(_number(getattr(meta, type(meta).__name__.lower()))))
        elif isinstance(meta, annotated_types.MinLen):
            out.append(f"min length {meta.min_length}")
        else:
            raise TypeError(f"no wording for the constraint {meta!r}: extend constraint_text")
    return ", ".join(out)


def _summary(model: type[BaseModel]) -> str:
    doc = inspect.cleandoc(model.__doc__ or "")
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def render_model(model: type[BaseModel]) -> str:
    """One model's section: its docstring's first paragraph and a table of its fields.

    Raises:
        ValueError: a field has no ``description`` (the reference would have a hole).
    """
    rows = []
    for name, field in model.model_fields.items():
        if not field.description:
            raise ValueError(f"{model.__name__}.{name} has no description")
        cells = (
            f"`{field.alias or name}`",
            type_text(field.annotation),
            default_text(field),
            constraint_text(field),
            field.description.replace("|", "\\|"),
        )
        rows.append("| " + " | ".join(cells) + " |")
    lines = [f"### `{model.__name__}`", ""]
    if summary := _summary(model):
        lines += [summary, ""]
    lines += ["| Field | Type | Default | Constraint | Meaning |", "|---|---|---|---|---|", *rows]
    return "\n".join(lines)


def render() -> str:
    """The whole generated reference (what goes between :data:`BEGIN` and :data:`END`)."""
    return "\n\n".join(render_model(m) for m in MODELS) + "\n"


def generated_block(text: str) -> str:
    """The text between the markers of ``text``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN!r} … {END!r} are missing")
    return text[start + len(BEGIN) : end].strip("\n") + "\n"


def splice(text: str) -> str:
    """``text`` with its generated block replaced by :func:`render`."""
    generated_block(text)  # the markers must be there
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n\n" + render() + "\n" + text[end:]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write"] and len(argv) == 2:
        path = Path(argv[1])
        path.write_text(splice(path.read_text()))
        return 0
    if argv:
        print(f"usage: {REGENERATE} (or no argument: print to stdout)", file=sys.stderr)
        return 2
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
