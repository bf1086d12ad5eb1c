"""Load and validate the policy file; errors name the field and the problem."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from rewriter.policy import Policy


class PolicyFileError(Exception):
    """The policy file is unreadable or invalid; ``problems`` lists ``field: problem`` lines."""

    code = "policy.invalid_file"

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    policy: Policy
    #: SHA-256 of the file's bytes: the policy_version stamped on every audit record.
    version: str
    path: Path


def load_policy(path: Path) -> LoadedPolicy:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyFileError(path, [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise PolicyFileError(
            path, [f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"]
        ) from None
    if not isinstance(data, dict):
        raise PolicyFileError(path, ["the file must hold a mapping with a 'datasets' key"])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}")
        raise PolicyFileError(path, problems) from None
    return LoadedPolicy(policy=policy, version=hashlib.sha256(raw).hexdigest()[:16], path=path)
