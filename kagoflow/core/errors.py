"""Errors that name exactly what is wrong, for operators reading logs and CLI output."""

from __future__ import annotations

import reprlib

_REPR = reprlib.Repr()  # Python 3.11: limits are attributes, not constructor arguments
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 120, 120
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


class ContractError(ValueError):
    """A record breaks the SPEC §1 input contract. ``reason`` is short and names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RuleError(ValueError):
    """A rule or shop file is invalid: names the file, the key (dotted path) and the offending value."""

    def __init__(self, file: str, key: str, value: object, problem: str) -> None:
        super().__init__(f"{file}: {key}: {_short_repr(value)}: {problem}")
        self.file = file
        self.key = key
        self.value = value
        self.problem = problem


def _short_repr(value: object) -> str:
    """A bounded ``repr``: a value from a hostile file (huge, or aliased into billions of nodes) must not
    cost seconds and gigabytes to put in one error message."""
    return _REPR.repr(value)
