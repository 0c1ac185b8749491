"""Render budget of the template sandbox: a time limit and size limits that a template cannot talk its way
around.

jinja2's sandbox stops access to Python internals, not work: ``{% for a in range(99999) %}{% for b in
range(99999) %}{% endfor %}{% endfor %}`` runs for hours, ``{{ "x" * 10**10 }}`` allocates 10 GB, a macro
calling itself recurses until Python gives up. Mail templates are written by shop operators, so a render
gets:

- a deadline, checked at the start of every block body the template runs (each loop iteration, branch,
  macro call): the code generator below inserts the check into the compiled template, ~0.1 µs each;
- bounded strings: ``~`` concatenations, ``+`` and ``*`` results and the width arguments of the padding
  filters may not pass ``max_chars``; ``**`` takes exponents up to ``MAX_EXPONENT``;
- an output limit, counted while the output is generated (``render_bounded``).

A breach raises ``BudgetExceeded``; the caller turns it into ``templates/<file>:<line>: problem``.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, cast

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat, Node

MAX_EXPONENT = 1_000
_SIZED_FILTERS = ("center", "indent", "wordwrap")
"""Builtin filters whose numeric argument sets the size of what they build."""


class BudgetExceeded(Exception):
    """The render ran out of time, or built a string or an output over the size limit."""


class _Budget(threading.local):
    deadline: float | None = None
    seconds: float = 0.0
    max_chars: int = 1_000_000


_budget = _Budget()


class BudgetCodeGenerator(CodeGenerator):
    """Compiles templates with a deadline check at the start of every block body and a size check around
    every ``~`` concatenation."""

    def blockvisit(self, nodes: Iterable[Node], frame: Frame) -> None:
        self.writeline("environment.checkpoint()")
        super().blockvisit(nodes, frame)

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.bounded(")
        super().visit_Concat(node, frame)
        self.write(")")


class BudgetMixin:
    """For a ``SandboxedEnvironment`` subclass (listed before it): the hooks the compiled code calls."""

    code_generator_class: type[CodeGenerator] = BudgetCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+"})

    def checkpoint(self) -> None:
        deadline = _budget.deadline
        if deadline is not None and time.monotonic() > deadline:
            raise BudgetExceeded(f"render took longer than {_budget.seconds:g}s")

    def bounded(self, value: Any) -> Any:
        if isinstance(value, str | list | tuple) and len(value) > _budget.max_chars:
            raise BudgetExceeded(f"a value grew past {_budget.max_chars:,} characters")
        return value

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        if op == "**" and isinstance(right, int) and right > MAX_EXPONENT:
            raise BudgetExceeded(f"exponent {right} is over {MAX_EXPONENT}")
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > _budget.max_chars:
                    raise BudgetExceeded(f"a value would grow past {_budget.max_chars:,} characters")
        result = _BINOPS[op](left, right)
        return self.bounded(result) if op != "**" else result


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {"*": operator.mul, "**": operator.pow, "+": operator.add}


def _sized(original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        for value in (*args[1:], *kwargs.values()):
            if isinstance(value, int) and value > _budget.max_chars:
                raise BudgetExceeded(f"a width of {value} is over {_budget.max_chars:,}")
        return original(*args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    for marker in ("jinja_pass_arg",):
        if hasattr(original, marker):
            setattr(guarded, marker, getattr(original, marker))
    return guarded


def install(env: jinja2.Environment) -> None:
    """Guard the size-setting builtin filters of ``env``."""
    for name in _SIZED_FILTERS:
        env.filters[name] = _sized(env.filters[name])


def render_bounded(
    template: jinja2.Template, context: Mapping[str, Any], *, seconds: float, max_chars: int
) -> str:
    """Render with a deadline ``seconds`` from now and at most ``max_chars`` of output (and of any string
    built on the way). Raises ``BudgetExceeded``; nested renders keep the outer deadline."""
    outer = (_budget.deadline, _budget.seconds, _budget.max_chars)
    now = time.monotonic()
    if outer[0] is None or now + seconds < outer[0]:
        _budget.deadline, _budget.seconds = now + seconds, seconds
    _budget.max_chars = max_chars
    try:
        parts: list[str] = []
        size = 0
        chunks = cast(Generator[str, None, None], template.generate(context))
        for chunk in chunks:
            size += len(chunk)
            if size > max_chars:
                # raised inside the template, at the output that broke the limit: the error names its line
                chunks.throw(BudgetExceeded(f"output over {max_chars:,} characters"))
            parts.append(chunk)
        return "".join(parts)
    finally:
        _budget.deadline, _budget.seconds, _budget.max_chars = outer
