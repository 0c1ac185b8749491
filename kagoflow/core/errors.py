"""Errors that name exactly what is wrong, for operators reading logs and CLI output."""

from __future__ import annotations


class ContractError(ValueError):
    """A record breaks the SPEC §1 input contract. ``reason`` is short and names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RuleError(ValueError):
    """A rule or shop file is invalid: names the file, the key (dotted path) and the offending value."""

    def __init__(self, file: str, key: str, value: object, problem: str) -> None:
        super().__init__(f"{file}: {key}: {value!r}: {problem}")
        self.file = file
        self.key = key
        self.value = value
        self.problem = problem
