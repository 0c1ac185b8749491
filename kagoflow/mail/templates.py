"""Mail templates: loading, sandboxed rendering and the load-time check.

A template named X is the directory ``templates/X/`` with ``subject.txt``, ``text.j2`` and ``html.j2``, and
optionally device variants named ``<part>.<device>.<ext>`` (``html.mobile.j2``, ``subject.smartphone.txt``...)
that win for members on that device. Shared macros and layouts live in ``templates/_partials/``.

Templates are written by shop operators, so they are rendered in jinja2's immutable sandbox (no access to
Python internals, no mutation of the objects passed in), HTML parts are autoescaped, and an undefined
variable is an error instead of an empty string. ``check_templates`` renders every part with sample data
when rules are loaded, so a typo fails the rule check naming file and line rather than a mail at 3 am.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kagoflow.core.errors import RuleError
from kagoflow.mail import budget
from kagoflow.mail.context import RECORD_FIELDS, sample_contexts

TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
PART_FILES: dict[str, tuple[str, str]] = {
    "subject": ("subject", "txt"),
    "text": ("text", "j2"),
    "html": ("html", "j2"),
}
DEVICES = ("pc", "smartphone", "mobile")
RENDER_SECONDS = 1.0
"""Time budget of one part's render (the shipped templates take well under a millisecond)."""
MAX_OUTPUT_CHARS = 1_000_000
"""Output limit of one part (and of any string built while rendering it)."""
_LANG = re.compile(r"^[a-z]{2,3}$")


def locale_language(locale: str | None) -> str:
    """``ja-JP`` / ``en_US`` → ``ja`` / ``en``; '' when unknown."""
    if not locale:
        return ""
    lang = locale.replace("_", "-").split("-", 1)[0].lower()
    return lang if _LANG.match(lang) else ""


class TemplateError(RuleError):
    """A template cannot be used: names the file (relative to the templates directory) and line.

    A ``RuleError`` so that rule loading and ``kagoflow rules check`` report it like any other rule error.
    """

    def __init__(self, file: str, line: int | None, problem: str) -> None:
        where = f"{file}:{line}" if line else file
        ValueError.__init__(self, f"templates/{where}: {problem}")
        self.file = file
        self.key = "line"
        self.value = line
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class RenderedMail:
    subject: str
    text: str
    html: str


def _autoescape(name: str | None) -> bool:
    base = (name or "").rsplit("/", 1)[-1]
    return base.startswith("html") or ".html." in base


def _yen(value: Any) -> str:
    """1980 -> '1,980円' (prices are whole yen; fractions are rounded)."""
    return f"{round(float(value)):,}円"


class MailSandbox(budget.BudgetMixin, ImmutableSandboxedEnvironment):
    """The immutable sandbox with a render budget (``kagoflow.mail.budget``) and a fast path for the mail
    context records.

    The sandbox vets every attribute access (~3 µs each, ~50 per mail); the context records are frozen
    dataclasses whose fields are plain data, so a field of theirs is returned directly and everything
    else still goes through the full check.
    """

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A plain dict instead of jinja's ``ChainMap(d, env.globals)``: every render copies the globals
        (``dict(ChainMap)`` runs in Python, ~4 times per mail). This environment's globals are complete once
        it is built (``make_environment``), as jinja asks of any environment whose templates are loaded."""
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        record_fields = RECORD_FIELDS.get(type(obj))
        if record_fields is not None and attribute in record_fields:
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)


def make_environment(templates_dir: Path) -> ImmutableSandboxedEnvironment:
    env = MailSandbox(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=_autoescape,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yen"] = _yen
    budget.install(env)
    return env


class MailTemplates:
    """The templates of one directory, compiled once and cached."""

    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = Path(templates_dir)
        self.env = make_environment(self.templates_dir)
        self._files: dict[tuple[str, str, str], str] = {}
        self._compiled: dict[str, jinja2.Template] = {}

    def exists(self, name: str) -> bool:
        return bool(TEMPLATE_NAME.match(name)) and (self.templates_dir / name).is_dir()

    def part_file(self, name: str, part: str, device: str | None, lang: str = "") -> str:
        """Loader name of the file rendering ``part`` of template ``name`` for ``device`` and language
        ``lang`` (SPEC §13 locale variants): ``html.en.mobile.j2``, ``html.en.j2``, ``html.mobile.j2``,
        ``html.j2`` — the first that exists."""
        cache_key = (name, part, f"{device or ''}|{lang}")
        found = self._files.get(cache_key)
        if found is None:
            if not self.exists(name):
                raise TemplateError(name, None, "no such template directory")
            stem, ext = PART_FILES[part]
            found = f"{name}/{stem}.{ext}"
            candidates = [f"{stem}.{lang}.{device}.{ext}", f"{stem}.{lang}.{ext}"] if lang and device else (
                [f"{stem}.{lang}.{ext}"] if lang else [])
            if device:
                candidates.append(f"{stem}.{device}.{ext}")
            for candidate in candidates:
                if (self.templates_dir / name / candidate).is_file():
                    found = f"{name}/{candidate}"
                    break
            else:
                if not (self.templates_dir / found).is_file():
                    raise TemplateError(found, None, "missing template file")
            self._files[cache_key] = found
        return found

    def render(self, name: str, *, device: str | None, context: Mapping[str, Any],
               locale: str | None = None) -> RenderedMail:
        lang = locale_language(locale)
        subject = self._render(self.part_file(name, "subject", device, lang), context)
        return RenderedMail(
            subject=" ".join(subject.split()),
            text=self._render(self.part_file(name, "text", device, lang), context),
            html=self._render(self.part_file(name, "html", device, lang), context),
        )

    def languages(self, name: str) -> set[str]:
        """The locale variants a template directory has (``html.en.j2`` → ``en``)."""
        out = set()
        for path in (self.templates_dir / name).iterdir():
            parts = path.name.split(".")
            if len(parts) >= 3 and parts[0] in ("subject", "text", "html") and _LANG.match(parts[1]) \
                    and parts[1] not in DEVICES:
                out.add(parts[1])
        return out

    def _render(self, file: str, context: Mapping[str, Any]) -> str:
        try:
            template = self._compiled.get(file)
            if template is None:
                template = self._compiled[file] = self.env.get_template(file)
            return budget.render_bounded(template, context, seconds=RENDER_SECONDS, max_chars=MAX_OUTPUT_CHARS)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(exc.name or file, exc.lineno, exc.message or "syntax error") from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                file, _line_in(exc, self.templates_dir)[1], f"template not found: {exc.name}"
            ) from None
        except (
            jinja2.UndefinedError,
            SecurityError,
            TypeError,
            ValueError,
            ArithmeticError,
            LookupError,
        ) as exc:
            where, line = _line_in(exc, self.templates_dir)
            kind = "unsafe" if isinstance(exc, SecurityError) else type(exc).__name__
            raise TemplateError(where or file, line, f"{kind}: {exc}") from None
        except (budget.BudgetExceeded, RecursionError, MemoryError) as exc:
            where, line = _line_in(exc, self.templates_dir)
            problem = str(exc) if isinstance(exc, budget.BudgetExceeded) else f"{type(exc).__name__}: {exc}"
            del exc  # a MemoryError's traceback holds the frames (and their locals) that filled memory
            raise TemplateError(where or file, line, problem) from None

    def check(self, names: Iterable[str]) -> None:
        """Compile and trial-render every file (all device variants) of every named template."""
        for name in sorted(set(names)):
            if not self.exists(name):
                raise TemplateError(name, None, "no such template directory")
            for lang in ("", *sorted(self.languages(name))):
                for device in (None, *DEVICES):
                    for part in PART_FILES:
                        file = self.part_file(name, part, device, lang)
                        for context in sample_contexts(device or "pc"):
                            self._render(file, context)


def _line_in(exc: BaseException, templates_dir: Path) -> tuple[str | None, int | None]:
    """Innermost traceback frame in the templates directory (jinja rewrites frames to template lines)."""
    root = str(templates_dir.resolve())
    found: tuple[str | None, int | None] = (None, None)
    for frame in traceback.extract_tb(exc.__traceback__):
        path = (
            str(Path(frame.filename).resolve()) if frame.filename.startswith(("/", ".")) else frame.filename
        )
        if path.startswith(root + "/"):
            found = (path[len(root) + 1 :], frame.lineno)
    return found


def check_templates(templates_dir: Path, names: Iterable[str]) -> None:
    """Raise ``TemplateError`` naming file and line if any named template cannot render."""
    MailTemplates(templates_dir).check(names)
