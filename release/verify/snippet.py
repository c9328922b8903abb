"""The card's code as a gate: the model card's Python block, run verbatim, the way a new user runs it.

A user copies the card's snippet into a script or a notebook. It must load the release without a prompt
("Do you wish to run the custom code? [y/N]"), without transformers warning about model types or unused kwargs,
and generate exactly the greedy tokens the verification recorded. ``run_card_snippet`` checks that:

- The snippet is executed unchanged by ``snippet_child.py`` in a fresh Python (``-E -P``, cwd a temporary folder,
  this repo's packages refused by ``without_repo.py`` even where they are installed) with standard input closed
  (``/dev/null``; ``input()`` is observed: it records what was asked and raises ``EOFError``, as closed standard
  input does).
- The repo id and revision the snippet names resolve, offline, to the files under test: the child's Hub cache
  (``HF_HUB_CACHE``, fresh) holds ``models--<owner>--<name>/snapshots/<commit>`` linking to the folder's files and
  ``refs/<revision>`` naming that commit, the layout ``huggingface_hub`` writes itself. The code does not have to
  be edited to point at a folder, and a revision that is not tagged yet (publish's check runs before the tag is
  created) resolves to exactly the staged commit's files.
- Any interpreter can run it (``python``: this one for ``release verify``, each transformers version's
  environment for the compatibility matrix); the child imports only the standard library before it runs the
  snippet, and sees that interpreter's packages only.

A failure is one line naming the snippet's line: ``card snippet line 6 (`tokenizer = ...`): ValueError: ...``.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from release.errors import VerificationError
from release.verify.without_repo import child_command

if TYPE_CHECKING:
    from release.verify.report import GateResult

SNIPPET_TIMEOUT = 900.0  # seconds: importing torch + transformers and one small generate
CARD_FILE = "README.md"
# What transformers says when the snippet is wrong for this model: the model-type mismatch (AutoTokenizer on
# 5.x falling back to a plain config after the remote-code prompt), unused/ignored generate() kwargs
# (token_type_ids on 4.x), and trust_remote_code complaints.
FATAL_WARNINGS = (
    re.compile(r"model of type .* to instantiate a model of type", re.IGNORECASE | re.DOTALL),
    re.compile(r"model_kwargs.* not used", re.IGNORECASE | re.DOTALL),
    re.compile(r"(not used|ignored|unused|not valid).*(kwarg|argument|flag)", re.IGNORECASE | re.DOTALL),
    re.compile(r"(kwarg|argument|flag).*(not used|ignored|unused|not valid)", re.IGNORECASE | re.DOTALL),
    re.compile(r"trust_remote_code", re.IGNORECASE),
)
PROMPT_TEXT = re.compile(r"\[y/N\]")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_FENCE = re.compile(
    r"^(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S
)

CHILD = Path(__file__).with_name("snippet_child.py")  # started by path: the interpreter may lack this project


@dataclass(frozen=True)
class ExpectedRun:
    """The verified greedy run the snippet must reproduce: its prompt's ids and the new tokens."""

    input_ids: list[int]
    new_ids: list[int]

    @classmethod
    def from_report(cls, report: Mapping[str, Any], prompt: str) -> ExpectedRun | None:
        """The recorded case of ``prompt`` in a verification report (``generation.cases``); None if absent."""
        for case in report.get("generation", {}).get("cases", []):
            if case.get("prompt") == prompt and isinstance(case.get("candidate_ids"), list):
                return cls(
                    [int(t) for t in case.get("input_ids") or []], [int(t) for t in case["candidate_ids"]]
                )
        return None


@dataclass
class SnippetResult:
    """What running the snippet showed. ``failures``: one line each; empty when it ran silently and matched."""

    failures: list[str]
    stdout: str = ""
    warnings: list[str] = field(default_factory=list)  # every warning seen, fatal or not
    new_ids: list[int] | None = None
    targets: list[tuple[str, str | None]] = field(default_factory=list)  # (repo id, revision) it loads

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "warnings": list(self.warnings),
            "new_ids": self.new_ids,
            "targets": [list(t) for t in self.targets],
        }


def extract_python_block(markdown: str) -> str:
    """The first fenced ``python`` block of a card that calls ``from_pretrained``.

    Raises:
        VerificationError: The card has no such block.
    """
    for match in _FENCE.finditer(markdown):
        if match["lang"].lower() in ("python", "py") and "from_pretrained" in match["body"]:
            return match["body"]
    raise VerificationError(
        "the model card has no ```python block that calls from_pretrained; nothing to run"
    )


def card_has_code(folder: Path) -> bool:
    """Whether ``folder`` has no card yet (the template's code is run) or a card with a runnable block.

    False for a README.md with no ```python block calling ``from_pretrained``: a card of the user's own template
    without code has nothing a user would run verbatim.
    """
    card = Path(folder) / CARD_FILE
    if not card.is_file():
        return True
    try:
        extract_python_block(card.read_text(encoding="utf-8"))
    except VerificationError:
        return False
    return True


def snippet_targets(code: str) -> list[tuple[str, str | None]]:
    """The (repo id, revision) pairs the snippet's ``from_pretrained`` calls load, resolved from its literals.

    Raises:
        VerificationError: The snippet is not valid Python, or a repo id is not a literal (or a name bound to one).
    """
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        line = (exc.text or "").strip()
        raise VerificationError(
            f"card snippet line {exc.lineno} (`{line}`): SyntaxError: {exc.msg}"
        ) from None
    names: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node.value.value

    def literal(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return names.get(node.id)
        return None

    targets: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "from_pretrained":
            continue
        first = (
            node.args[0]
            if node.args
            else next((k.value for k in node.keywords if k.arg in ("pretrained_model_name_or_path",)), None)
        )
        repo = literal(first)
        if repo is None:
            raise VerificationError(
                f"card snippet line {node.lineno}: from_pretrained's repo id is not a string the card states"
            )
        revision = literal(next((k.value for k in node.keywords if k.arg == "revision"), None))
        if (repo, revision) not in targets:
            targets.append((repo, revision))
    if not targets:
        raise VerificationError("the card's snippet calls no from_pretrained; nothing to check")
    return sorted(targets, key=lambda t: (t[0], t[1] or ""))


def snapshot_commit(files: Mapping[str, str]) -> str:
    """A 40-hex commit id for a folder's files (path -> sha256): stable for the same files."""
    digest = hashlib.sha1(usedforsecurity=False)
    for rel, sha in sorted(files.items()):
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest()


def stage_hub_cache(
    folder: Path, hub_cache: Path, targets: Sequence[tuple[str, str | None]], *, commit: str | None = None
) -> None:
    """Lay ``folder`` out in ``hub_cache`` as the snapshot every (repo id, revision) of ``targets`` resolves to.

    The layout is huggingface_hub's own cache (``models--a--b/snapshots/<commit>``, ``refs/<revision>``); the
    files are symlinks to ``folder``'s, so nothing is copied.
    """
    from release._io import hash_folder

    folder = Path(folder).resolve()
    files = hash_folder(folder)
    commit = commit or snapshot_commit(files)
    hub_cache.mkdir(parents=True, exist_ok=True)
    (hub_cache / "version.txt").write_text("1", encoding="utf-8")  # transformers 4.x: a current cache layout
    for repo_id, revision in targets:
        repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
        pinned = (
            revision if revision and _COMMIT.fullmatch(revision) else commit
        )  # a commit names its snapshot
        snapshot = repo / "snapshots" / pinned
        for rel in files:
            link = snapshot / rel
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(folder / rel)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        for ref in sorted({revision or "main", "main"} - {pinned}):
            (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
            (repo / "refs" / ref).write_text(pinned, encoding="utf-8")


def run_card_snippet(
    code: str,
    folder: Path,
    *,
    expected: ExpectedRun | None,
    python: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    commit: str | None = None,
    timeout: float = SNIPPET_TIMEOUT,
) -> SnippetResult:
    """Run the card's ``code`` verbatim against ``folder`` in a fresh Python with standard input closed.

    Args:
        code: The card's Python block (``extract_python_block``), unchanged.
        folder: The files every repo id/revision the snippet names resolves to (a model folder or a snapshot).
        expected: The verified greedy run of the snippet's prompt; None skips the token comparison.
        python: The interpreter, with the torch and transformers under test (default: this one; the
            compatibility matrix passes each version's environment's). It sees its own packages only
            (``without_repo.child_command``), and never this repo's.
        env: Extra environment variables for the child (never printed).
        commit: The snapshot's commit id (a Hub revision's real commit); default one derived from the files.

    Returns:
        The result; ``failures`` holds one line per problem, each naming the snippet line where it can.

    Raises:
        VerificationError: The snippet is not valid Python or names no literal repo id.
    """
    with started_card_snippet(code, folder, python=python, env=env, commit=commit, timeout=timeout) as finish:
        return finish(expected)


@contextlib.contextmanager
def started_card_snippet(
    code: str,
    folder: Path,
    *,
    python: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    commit: str | None = None,
    timeout: float = SNIPPET_TIMEOUT,
) -> Iterator[Callable[[ExpectedRun | None], SnippetResult]]:
    """``run_card_snippet`` in two halves: the child starts on entry; the function given waits for it and judges
    its tokens against the expected run, which may be known only later. Leaving the block stops a child that is
    still running. Same arguments as ``run_card_snippet``."""
    targets = snippet_targets(code)
    lines = code.splitlines()
    with tempfile.TemporaryDirectory(prefix="release-card-snippet-") as tmp:
        work = Path(tmp)
        snippet, result_path = work / "card_snippet.py", work / "result.json"
        snippet.write_text(code, encoding="utf-8")
        hf_home = work / "hf"
        stage_hub_cache(Path(folder), hf_home / "hub", targets, commit=commit)
        cmd = child_command(python or sys.executable, CHILD, snippet, result_path)
        # Output to files, not pipes: nobody reads a pipe while the caller works, and a full one would stall it.
        with open(work / "stdout", "w+", encoding="utf-8") as out, open(work / "stderr", "w+") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env=child_environment(hf_home, env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
            deadline = time.monotonic() + timeout

            def finish(expected: ExpectedRun | None) -> SnippetResult:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    return SnippetResult(
                        [f"card snippet: did not finish within {timeout:.0f}s"], targets=targets
                    )
                out.seek(0)
                err.seek(0)
                stdout, stderr = out.read(), err.read()
                if not result_path.is_file():
                    tail = [ln for ln in stderr.splitlines() if ln.strip()]
                    return SnippetResult(
                        [
                            f"card snippet: the process died (exit code {proc.returncode}): "
                            f"{tail[-1] if tail else 'no output'}"
                        ],
                        stdout=stdout,
                        targets=targets,
                    )
                raw = json.loads(result_path.read_text(encoding="utf-8"))
                return judge_snippet_run(raw, lines, expected, stdout=stdout, stderr=stderr, targets=targets)

            try:
                yield finish
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def judge_snippet_run(
    raw: Mapping[str, Any],
    lines: Sequence[str],
    expected: ExpectedRun | None,
    *,
    stdout: str = "",
    stderr: str = "",
    targets: Sequence[tuple[str, str | None]] = (),
) -> SnippetResult:
    """Turn the child's record into failure lines (prompt, fatal warnings, error, tokens), in that order."""

    def at(line: int | None) -> str:
        if line is None or not 1 <= line <= len(lines):
            return "card snippet"
        return f"card snippet line {line} (`{lines[line - 1].strip()}`)"

    failures: list[str] = []
    for prompt in raw.get("prompts", []):
        asked = [ln.strip() for ln in str(prompt["text"]).splitlines() if ln.strip()]
        failures.append(f"{at(prompt['line'])}: asks for input: {asked[-1] if asked else '(empty prompt)'!r}")
    if not raw.get("prompts") and (PROMPT_TEXT.search(stdout) or PROMPT_TEXT.search(stderr)):
        failures.append("card snippet: asks for input: 'Do you wish to run the custom code? [y/N]'")
    seen = []
    for warning in raw.get("warnings", []):
        text = " ".join(str(warning["text"]).split())
        seen.append(text)
        if any(p.search(text) for p in FATAL_WARNINGS):
            failures.append(f"{at(warning['line'])}: transformers warns: {text[:300]}")
    if raw.get("error"):
        failures.append(f"{at(raw.get('error_line'))}: {raw['error'][:300]}")
    new_ids = raw.get("new_ids")
    if expected is not None and not raw.get("error"):
        if new_ids is None:
            failures.append(
                "card snippet: no `inputs` and `output` to compare with the verified greedy run"
                + (f" ({raw['read_error']})" if raw.get("read_error") else "")
            )
        elif expected.input_ids and raw.get("input_ids") != expected.input_ids:
            failures.append(
                f"card snippet: the prompt tokenizes to {raw.get('input_ids')}, the verified run to "
                f"{expected.input_ids}"
            )
        elif not _same_greedy_run(new_ids, expected.new_ids):
            index = next(
                (i for i, (a, b) in enumerate(zip(expected.new_ids, new_ids, strict=False)) if a != b),
                min(len(expected.new_ids), len(new_ids)),
            )
            want = expected.new_ids[index] if index < len(expected.new_ids) else "end"
            got = new_ids[index] if index < len(new_ids) else "end"
            failures.append(
                f"card snippet: greedy token {index} of {len(expected.new_ids)} differs from the verified run "
                f"(verified {want}, got {got})"
            )
    return SnippetResult(failures, stdout=stdout, warnings=seen, new_ids=new_ids, targets=list(targets))


def _same_greedy_run(got: list[int], want: list[int]) -> bool:
    """Equal, or one a prefix of the other: a card asking for fewer (or more) new tokens than the verified run
    continues greedily along the same path; a stop at eos happens at the same step in both."""
    n = min(len(got), len(want))
    return got[:n] == want[:n] and (len(got) == len(want) or n > 0)


def child_environment(hf_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of a child that runs model code: this process's, less every Python, Hub and transformers
    setting (a token included), with a fresh, offline Hub cache at ``hf_home``; then ``extra``."""
    drop = ("PYTHON", "HF_", "HUGGINGFACE_", "TRANSFORMERS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_CACHE=str(hf_home / "hub"),
        HF_MODULES_CACHE=str(hf_home / "modules"),
        HF_HUB_OFFLINE="1",  # the snapshot is in the cache; nothing is fetched
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- the snippet of a folder / revision


def card_snippet(
    folder: Path, *, repo_id: str | None = None, version: str | None = None, report: Mapping | None = None
) -> str:
    """The card's Python block for ``folder``: from its README.md when it has one, else the card's template.

    Before the card is rendered (``release verify`` runs first) the snippet comes from the same template the
    card shows (``release.verify.usage.usage_snippet``), with ``repo_id``/``version`` (placeholders when not known).
    """
    card = Path(folder) / CARD_FILE
    if card.is_file():
        return extract_python_block(card.read_text(encoding="utf-8"))
    from release.verify.usage import usage_snippet

    return extract_python_block(
        usage_snippet(repo_id=repo_id or "OWNER/NAME", version=version or "v0.0.0", verification=report)
    )


def snippet_prompt(code: str) -> str | None:
    """The prompt the snippet tokenizes: the string literal of its first ``...(text, return_tensors=...)`` call."""
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
    for node in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
        if (
            any(k.arg == "return_tensors" for k in node.keywords)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            return node.args[0].value
    return None


def check_card_snippet(
    folder: Path,
    *,
    report: Mapping[str, Any] | None,
    repo_id: str | None = None,
    version: str | None = None,
    python: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    commit: str | None = None,
) -> SnippetResult:
    """The gate on a folder: its card's snippet (or the card template's), run against it, tokens from ``report``.

    Raises:
        VerificationError: The card has no runnable Python block.
    """
    code = card_snippet(folder, repo_id=repo_id, version=version, report=report)
    snippet_targets(code)  # a syntax error: one line naming the snippet's line
    expected = _expected_run(code, report) if report else None
    return run_card_snippet(code, folder, expected=expected, python=python, env=env, commit=commit)


def _expected_run(code: str, report: Mapping[str, Any]) -> ExpectedRun:
    """The verified run of the snippet's prompt.

    Raises:
        VerificationError: The report has no case of that prompt (the card was rendered for other prompts).
    """
    prompt = snippet_prompt(code)
    expected = ExpectedRun.from_report(report, prompt) if prompt is not None else None
    if expected is None:
        shown = repr(prompt) if prompt is not None else "(no tokenizer(text, return_tensors=...) call)"
        raise VerificationError(
            f"the card's prompt {shown} is not among the verified generation cases; re-render the card"
        )
    return expected


def check_card_snippet_on_hub(
    repo_id: str,
    *,
    revision: str,
    report: Mapping[str, Any],
    python: str | Path | None = None,
) -> SnippetResult:
    """Publish's post-upload check: download ``repo_id@revision`` (a commit) fresh and run its card's snippet.

    The snippet's own repo id and revision (the tag about to be created) resolve to that commit's files.

    Raises:
        VerificationError: The revision cannot be downloaded, or its card has no runnable Python block.
    """
    from release.verify.loading import candidate_source

    with candidate_source(repo_id, revision) as source:
        return check_card_snippet(source.folder, report=report, python=python, commit=source.commit)


@contextlib.contextmanager
def card_snippet_gate(
    folder: Path, *, prompt: str, max_new_tokens: int, commit: str | None = None
) -> Iterator[Callable[[Sequence[Mapping[str, Any]]], GateResult]]:
    """``release verify``'s ``card_snippet`` gate, started on entry: the card's code (as rendered for ``prompt``
    and ``max_new_tokens``) against ``folder``, in this environment. The function given waits for it and judges
    its tokens against the greedy cases verified meanwhile (``generation.cases``).

    The child runs while the caller's candidate half does: it maps the same weight files, so the two share one
    copy of the weights, and adds an interpreter's memory (torch + transformers, ~0.3 GB).

    Never raises: a card without a runnable block, or a snippet that breaks, is a failed gate.
    """
    from release.verify.report import GateResult

    def gate(result: SnippetResult | None, problem: str | None = None) -> GateResult:
        if result is not None and result.passed:
            detail = "the card's code runs verbatim with stdin closed: no prompt, no transformers warning, "
            return GateResult("card_snippet", True, True, True, detail + "the verified tokens")
        return GateResult("card_snippet", False, False, True, problem or "; ".join(result.failures))

    planned = {"generation": {"max_new_tokens": max_new_tokens, "cases": [{"prompt": prompt}]}}
    with contextlib.ExitStack() as stack:
        try:
            code = card_snippet(folder, report=planned)
            finish = stack.enter_context(started_card_snippet(code, folder, commit=commit))
        except VerificationError as exc:
            problem = str(exc)
            yield lambda cases: gate(None, problem)
            return

        def judge(cases: Sequence[Mapping[str, Any]]) -> GateResult:
            report = {"generation": {"max_new_tokens": max_new_tokens, "cases": list(cases)}}
            try:
                return gate(finish(_expected_run(code, report)))
            except VerificationError as exc:
                return gate(None, str(exc))

        yield judge


__all__ = [
    "ExpectedRun",
    "SnippetResult",
    "card_snippet",
    "card_snippet_gate",
    "check_card_snippet",
    "card_has_code",
    "check_card_snippet_on_hub",
    "extract_python_block",
    "judge_snippet_run",
    "run_card_snippet",
    "snippet_targets",
    "stage_hub_cache",
]
