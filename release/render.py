"""Jinja rendering for the card, the PR comment, the release notes and the job summary, and the card's checks.

Templates live in ``templates/`` (shipped as the package ``release.templates``). The environment uses
``StrictUndefined``: a missing value fails rendering with the template's name, the line and the variable,
instead of printing an empty string. After rendering, :func:`check_card_text` rejects anything that
should never reach the Hub: unresolved template syntax, placeholder text, empty headings.
"""

from __future__ import annotations

import functools
import json
import math
import re
import traceback
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import jinja2

from release.errors import CardError


def make_environment(template: Path | None = None) -> tuple[jinja2.Environment, str | None, list[Path]]:
    """(environment, name of the main template, search folders) for a built-in or user template.

    A user template is looked up first in its own folder, then among the built-in templates, so it can
    ``{% include "card/usage.md.j2" %}`` the built-in partials, or override them with its own ``card/``.
    """
    search = [Path(str(resources.files("release.templates")))]
    if template is not None:
        template = Path(template)
        if not template.is_file():
            raise CardError(f"template not found: {template}")
        search.insert(0, template.resolve().parent)
    return _environment(tuple(str(p) for p in search)), template.name if template else None, search


@functools.lru_cache(maxsize=8)
def _environment(search: tuple[str, ...]) -> jinja2.Environment:
    # Cached so templates compile once per process; Jinja still reloads a template whose file changed.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(search)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown, not HTML; values are escaped where they land (table cells, fences)
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        thousands=fmt_thousands,
        count=fmt_count,
        bytes=fmt_bytes,
        num=fmt_num,
        pct=fmt_pct,
        value=fmt_value,
        measure=fmt_measure,
        cell=md_cell,
        code=md_code,
        fence=md_fence,
        pystr=py_string,
    )
    return env


def render_template(name: str, context: Mapping, *, template: Path | None = None) -> str:
    """Render a built-in template ``name`` (or the user's ``template``) with ``context``; CardError on failure."""
    env, user_name, search = make_environment(template)
    main = user_name or name
    try:
        text = env.get_template(main).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        filename = exc.filename or exc.name or main
        where = _relative(filename, search) or filename
        raise CardError(f"{where}, line {exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise CardError(f"template not found: {exc.name} (looked in {', '.join(map(str, search))})") from None
    except jinja2.UndefinedError as exc:
        raise CardError(_undefined_message(exc, search, main)) from None
    except CardError as exc:  # raised by a filter; add where it happened
        raise CardError(f"{_template_location(exc, search, main)}: {exc}") from None
    return normalize_markdown(text)


def _template_location(exc: BaseException, search: list[Path], main: str) -> str:
    """'name, line N' of the innermost template frame in exc's traceback."""
    found = main
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if rel := _relative(frame.f_code.co_filename, search):
            found = f"{rel}, line {lineno}"
    return found


def _undefined_message(exc: jinja2.UndefinedError, search: list[Path], main: str) -> str:
    location = _template_location(exc, search, main)
    source_line = ""
    match = re.match(r"(.+), line (\d+)$", location)
    if match:
        for folder in search:
            path = folder / match.group(1)
            if path.is_file():
                lines = path.read_text(encoding="utf-8").splitlines()
                lineno = int(match.group(2))
                if 0 < lineno <= len(lines):
                    source_line = f" in `{lines[lineno - 1].strip()}`"
                break
    return f"{location}: undefined value: {exc.message}{source_line}"


def _relative(filename: str, search: list[Path]) -> str | None:
    """``filename`` relative to the first search folder that holds it, None outside them all."""
    for folder in search:
        try:
            return Path(filename).resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            continue
    return None


# --- filters -----------------------------------------------------------------------------------------


def fmt_thousands(n: int) -> str:
    return f"{n:,}"


def _scaled(n: int, units: tuple[tuple[float, str], ...]) -> str | None:
    """``n`` in the largest unit it reaches, to three significant digits; None below every unit."""
    for factor, suffix in units:
        if n >= factor:
            scaled = n / factor
            digits = 2 if scaled < 10 else 1 if scaled < 100 else 0
            return f"{scaled:.{digits}f}{suffix}"
    return None


def fmt_count(n: int) -> str:
    """1234567 -> '1.23M' (three significant digits), 950 -> '950'."""
    return _scaled(n, ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))) or str(n)


def fmt_bytes(n: int) -> str:
    """Decimal units, as the Hub shows file sizes: 1_234_567 -> '1.23 MB'."""
    return _scaled(n, ((1e12, " TB"), (1e9, " GB"), (1e6, " MB"), (1e3, " kB"))) or f"{n} B"


def fmt_num(x: float | int, digits: int = 4) -> str:
    """A metric value: fixed decimals, scientific for tiny differences (parity is ~1e-6); None is a dash."""
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise CardError(f"expected a number, found {x!r}")
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        raise CardError(f"expected a finite number, found {x}")
    if x == 0:
        return "0"
    if abs(x) < 10 ** -(digits - 1):
        return f"{x:.2e}"
    if abs(x) >= 100:  # perplexities: 3812.77, not 3812.7700
        return f"{x:,.2f}"
    return f"{x:.{digits}f}"


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x * 100:.{digits}f}%"


def fmt_value(x) -> str:
    """Any scalar from a report (gate values and thresholds, training settings) as card text."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise CardError(f"expected a finite number, found {x}")
        return repr(x)  # the shortest text that reads back as the same float: 0.001, 6e-05
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt_value(v) for v in x) or "—"
    if isinstance(x, Mapping):
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in x.items()) or "—"
    return str(x)


def fmt_measure(x) -> str:
    """A measured figure or a threshold from a report: four significant digits (6.557e-07, 0.0001)."""
    if isinstance(x, float) and math.isfinite(x):
        return format(x, ".4g")
    return fmt_value(x)


def md_cell(x) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    text = x if isinstance(x, str) else fmt_value(x)
    return " ".join(text.split()).replace("|", "\\|")


def md_code(x) -> str:
    """Inline code that survives backticks in the text."""
    text = str(x)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def md_fence(text: str, lang: str = "") -> str:
    """A fenced code block holding ``text`` verbatim, with a fence longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") else text + "\n"
    return f"{fence}{lang}\n{body}{fence}"


def py_string(text: str) -> str:
    """A Python string literal for code in the card (JSON's escapes are valid Python)."""
    return json.dumps(text, ensure_ascii=False)


# --- normalisation and checks ------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def iter_lines_outside_fences(lines: list[str]) -> Iterable[tuple[int, str, bool]]:
    """(index, line, inside_fence) for every line; fence lines themselves count as inside."""
    fence = None
    for i, line in enumerate(lines):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            yield i, line, True
        elif fence is not None:
            closing = (
                match is not None and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)
            )
            yield i, line, True
            if closing and line.strip() == match.group(1):
                fence = None
        else:
            yield i, line, False


def normalize_markdown(text: str) -> str:
    """Tidy rendered Markdown; fenced blocks are left byte for byte (they hold model outputs and code).

    Outside fences: trailing spaces are stripped, runs of blank lines collapse to one, and headings and
    fenced blocks get a blank line around them. Templates can then be written for readability without
    the exact whitespace Jinja leaves showing up in the card. The result ends with one newline.
    """
    lines = text.split("\n")
    out: list[str] = []
    front_matter_end = _strip_front_matter_lines(lines)
    previous_inside = False
    for i, line, inside in iter_lines_outside_fences(lines):
        if i < front_matter_end:
            out.append(line)
            continue
        opening = inside and not previous_inside
        if inside:
            if opening and out and out[-1]:
                out.append("")
            out.append(line)
            previous_inside = True
            continue
        line = line.rstrip()
        if previous_inside and line:
            out.append("")  # after a closing fence
        previous_inside = False
        if not line:
            if out and out[-1]:
                out.append("")
            continue
        if _HEADING.match(line) and out and out[-1]:
            out.append("")
        out.append(line)
        if _HEADING.match(line):
            out.append("")
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


# Placeholders that must never be published. Model outputs (sample generations) are removed before
# the scan: a model may well write "TODO" or "None".
_PLACEHOLDERS = [
    (re.compile(r"\bYOUR_[A-Z0-9_]+\b"), "placeholder"),
    (
        re.compile(r"\byour[-_](?:user(?:name)?|org(?:anization)?|name|model|repo(?:_id)?)\b", re.I),
        "placeholder",
    ),
    (re.compile(r"\b(?:TODO|FIXME|TBD|XXX)\b"), "placeholder"),
    (re.compile(r"\[?More Information Needed\]?", re.I), "placeholder"),
    (re.compile(r"\[\]\([^)]*\)|\[[^\]]+\]\(\s*\)"), "empty link"),
    # "None"/"null"/"nan" where a value belongs: table cells, after a colon, in code, in quotes.
    (re.compile(r"\|\s*(?:None|null|nan|NaN|undefined)\s*(?=\|)"), "missing value"),
    (re.compile(r":\s*(?:None|null|nan|NaN|undefined)\s*$"), "missing value"),
    (re.compile(r"`(?:None|null|nan|NaN|undefined)`"), "missing value"),
    (re.compile(r"=\s*[\"'](?:None|null|nan|NaN|undefined)[\"']"), "missing value"),  # revision="None"
    (re.compile(r"^\s*(?:None|null|nan|undefined)\s*$"), "missing value"),
]
_TEMPLATE_SYNTAX = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")
_ANGLE = re.compile(r"<([A-Za-z_][A-Za-z0-9_ .-]*)>")
# HTML the card may use; anything else in angle brackets is a placeholder like <your-model>.
_HTML_TAGS = {
    "details",
    "summary",
    "br",
    "sub",
    "sup",
    "b",
    "i",
    "em",
    "strong",
    "code",
    "kbd",
    "p",
    "div",
    "span",
}
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")


def check_card_text(
    text: str, *, verbatim: Iterable[str] = (), literal: Iterable[str] = (), label: str = "README.md"
) -> None:
    """Raise CardError listing every placeholder, unresolved template tag and empty heading in ``text``.

    ``verbatim`` strings are quoted as-is (model prompts and outputs) and not scanned at all; ``literal``
    strings (a BibTeX citation, whose ``{{...}}`` is not template syntax) are scanned for placeholders only.
    """
    verbatim = sorted({s for s in verbatim if s.strip()}, key=len, reverse=True)
    literal = sorted({s for s in literal if s.strip()}, key=len, reverse=True)
    scan = _blank_out(text, verbatim)
    scan_syntax = _blank_out(scan, literal)
    problems = []
    for lines, patterns in (
        (scan.split("\n"), _PLACEHOLDERS),
        (scan_syntax.split("\n"), [(_TEMPLATE_SYNTAX, "unresolved template syntax")]),
    ):
        for i, line in enumerate(lines):
            for pattern, what in patterns:
                for match in pattern.finditer(line):
                    problems.append((i, f"line {i + 1}: {what} {match.group(0).strip()!r}"))
    for i, line in enumerate(scan.split("\n")):
        for match in _ANGLE.finditer(line):
            if match.group(1).split()[0].lower() not in _HTML_TAGS:
                problems.append((i, f"line {i + 1}: placeholder {match.group(0)!r}"))
    problems.extend(_empty_headings(text.split("\n")))
    messages = [m for _, m in sorted(problems, key=lambda p: p[0])]
    if messages:
        shown = messages[:20] + ([f"... and {len(messages) - 20} more"] if len(messages) > 20 else [])
        raise CardError(f"{label} is not ready to publish:\n  " + "\n  ".join(shown))


def _blank_out(text: str, snippets: list[str]) -> str:
    for snippet in snippets:
        # Keep line structure (and so line numbers) intact.
        text = text.replace(snippet, re.sub(r"[^\n]", " ", snippet))
    return text


def _empty_headings(lines: list[str]) -> list[tuple[int, str]]:
    """A heading followed (after blank lines) by a heading of the same or a higher level, or by the end."""
    headings = []  # (index, level, title)
    has_content: dict[int, bool] = {}
    current = None
    body = _strip_front_matter_lines(lines)
    for i, line, inside in iter_lines_outside_fences(lines):
        if i < body:
            continue
        match = None if inside else _HEADING.match(line)
        if match:
            title = (match.group(2) or "").rstrip("#").strip()
            headings.append((i, len(match.group(1)), title))
            has_content[i] = False
            current = i
        elif line.strip() and current is not None:
            has_content[current] = True
    problems = []
    for n, (i, level, title) in enumerate(headings):
        if not title:
            problems.append((i, f"line {i + 1}: heading without a title"))
            continue
        following = headings[n + 1] if n + 1 < len(headings) else None
        if not has_content[i] and (following is None or following[1] <= level):
            problems.append((i, f"line {i + 1}: empty section {('#' * level) + ' ' + title!r}"))
    return problems


def _strip_front_matter_lines(lines: list[str]) -> int:
    """Index of the first body line (after a leading ``---`` YAML block), 0 without one."""
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() == "---":
                return i + 1
    return 0
