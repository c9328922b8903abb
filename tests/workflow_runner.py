"""Run a GitHub Actions workflow's jobs on this machine, the way a hosted runner would, for tests.

GitHub is unreachable from here, so the workflows are proved by running their steps locally:

    workflow = Workflow.load(".github/workflows/release.yml")
    run = WorkflowRun(workflow, Event.tag_push("v1.0.0"), root=tmp_path, host_env=env, secrets={...})
    build = run.run_job("build")          # JobResult: status, outputs, steps, summary, log
    publish = run.run_job("publish")      # its `needs` are the jobs already run in `run`

Every `run:` step is executed as written, in order, by bash (`bash --noprofile --norc -eo pipefail`, as
`shell: bash` does on a runner), in the job's own empty workspace, with the environment a hosted runner gives:
GITHUB_* and RUNNER_* (GITHUB_OUTPUT, GITHUB_ENV, GITHUB_PATH and GITHUB_STEP_SUMMARY as fresh files per step),
HOME (a fresh folder per job), and the workflow's, job's and step's `env:` evaluated with the expression
language below; `secrets.*` and `vars.*` come from the test. From the host only an allow-list passes through
(PATH, locale, certificates, OpenBLAS settings, and the HF_* client settings that point at the Hub emulator);
never HF_TOKEN or RELEASE_*, so a value can only reach a step the way the workflow passes it.

`uses:` steps are replaced by their local equivalent (LOCAL_ACTIONS):

    actions/checkout           the working tree (git ls-files: tracked files and untracked, non-ignored ones)
                               copied into the job's empty workspace; requires `persist-credentials: false`.
    actions/setup-python       the Python running the tests, its bin folder first on PATH; `python-version` must
                               be its MAJOR.MINOR.
    actions/cache              always a miss (output cache-hit=false); `key` and `path` must evaluate non-empty.
    actions/upload-artifact    copied to <root>/artifacts/<run id>/<name>/, rooted like upload-artifact v4+ (a
                               single folder: its contents; otherwise the paths' common ancestor); hidden files
                               only with `include-hidden-files: true`; names unique per run.
    actions/download-artifact  copied from the artifact store of this run (or of `run-id`, which then needs
                               `github-token`) into `path`.
    actions/github-script      the script run by node (as github-script does: an async function of require,
                               github, context, core) with `github` talking to a FakeGitHub: a fake of the
                               REST endpoints the workflows use, its state a JSON file the test reads back.

The GitHub CLI of hosted runners is replaced the same way: a run given a FakeGitHub finds a fake `gh` first on
PATH (`gh release create`, checking GH_TOKEN, GH_REPO and --verify-tag), so the step still runs as written.

One `run:` step is not executed: the step with `id: install` (pip-installing CPU torch and this package) maps to
"already installed", since the tests run inside the virtualenv that step would create and its bin folder is
first on PATH; that install is editable, so the `release` that runs is this working tree's code, the same
code the checkout copies. Every other `run:` step runs as written (INSTALL_STEP_ID).

Expressions (`${{ }}` and `if:`) are evaluated by a small implementation of GitHub's expression language:
literals, contexts (github, env, inputs, secrets, vars, steps, needs, matrix, strategy, runner, job), property
and index access, ! == != < <= > >= && ||, and the functions contains, startsWith, endsWith, format, join, toJSON,
fromJSON, hashFiles, success, failure, always, cancelled. Reading an output that a step which ran, or a job
that ran, never set is recorded in `WorkflowRun.unset_outputs`: that is how a test proves that the names the
YAML reads are the names the CLI writes.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_STEP_ID = "install"
REPOSITORY = "custom-transformer/custom-transformer-release"
SERVER_URL = "https://github.com"

# Host variables a step may see; everything else a step gets comes from the runner or the workflow.
HOST_ENV_ALLOWED = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "OPENBLAS_CORETYPE",
        "OPENBLAS_L2_SIZE",
        "OMP_NUM_THREADS",
        "NO_PROXY",
        "no_proxy",
        "PYTHONDONTWRITEBYTECODE",
    }
)
HOST_ENV_PREFIXES = ("HF_", "HUGGINGFACE_")
HOST_ENV_DENIED = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN"})


class WorkflowError(Exception):
    """The workflow cannot run as written (bad expression, unknown action, missing artifact, ...)."""


# --------------------------------------------------------------------------------------------- expressions

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?(?:0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?))
      | (?P<string>'(?:[^']|'')*')
      | (?P<op>==|!=|<=|>=|&&|\|\||[!<>().,\[\]*])
      | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise WorkflowError(f"cannot parse expression {text!r} at {text[pos:]!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _MissingOutputs(dict):
    """The outputs of a step or job that ran: reading one it never set is recorded (GitHub gives '')."""

    def __init__(self, values: Mapping[str, str], owner: str, record: Callable[[str], None]) -> None:
        super().__init__(values)
        self.owner = owner
        self.record = record

    def missing(self, key: str) -> None:
        self.record(f"{self.owner}.outputs.{key}")


def _truthy(value: Any) -> bool:
    if isinstance(value, float) and value != value:  # NaN
        return False
    return value not in (None, False, 0, "") and not (isinstance(value, float) and value == 0.0)


def _to_number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0.0
        try:
            return float(int(text, 16)) if text.lower().startswith("0x") else float(text)
        except ValueError:
            return float("nan")
    return float("nan")


def to_string(value: Any) -> str:
    """How GitHub turns a value into text inside `${{ }}`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, indent=2)
    return str(value)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if type(a) is type(b) or (isinstance(a, int | float) and isinstance(b, int | float)):
        if isinstance(a, dict | list):
            return a is b
        return a == b
    if a is None and b is None:
        return True
    return _to_number(a) == _to_number(b)


def _get_property(obj: Any, key: Any) -> Any:
    if isinstance(obj, list):
        try:
            return obj[int(_to_number(key))]
        except (IndexError, ValueError, OverflowError):
            return None
    if not isinstance(obj, dict):
        return None
    key = to_string(key)
    if key in obj:
        return obj[key]
    for name, value in obj.items():  # contexts are case-insensitive
        if isinstance(name, str) and name.lower() == key.lower():
            return value
    if isinstance(obj, _MissingOutputs):
        obj.missing(key)
    return None


class _Parser:
    def __init__(self, text: str, scope: Expressions) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.scope = scope

    def parse(self) -> Any:
        value = self.or_()
        if self.pos != len(self.tokens):
            raise WorkflowError(f"unexpected {self.tokens[self.pos][1]!r} in expression {self.text!r}")
        return value

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise WorkflowError(f"expected {value or 'a value'} in expression {self.text!r}")
        self.pos += 1
        return token

    def or_(self) -> Any:
        left = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            right = self.and_()
            left = left if _truthy(left) else right
        return left

    def and_(self) -> Any:
        left = self.compare()
        while self.peek() == ("op", "&&"):
            self.take()
            right = self.compare()
            left = right if _truthy(left) else left
        return left

    def compare(self) -> Any:
        left = self.unary()
        token = self.peek()
        if token and token[0] == "op" and token[1] in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            right = self.unary()
            op = token[1]
            if op == "==":
                return _equal(left, right)
            if op == "!=":
                return not _equal(left, right)
            if isinstance(left, str) and isinstance(right, str):
                a, b = left.lower(), right.lower()
            else:
                a, b = _to_number(left), _to_number(right)
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        return left

    def unary(self) -> Any:
        if self.peek() == ("op", "!"):
            self.take()
            return not _truthy(self.unary())
        return self.postfix()

    def postfix(self) -> Any:
        value = self.primary()
        while True:
            token = self.peek()
            if token == ("op", "."):
                self.take()
                kind, name = self.take()
                if kind == "op" and name == "*":
                    value = list(value.values()) if isinstance(value, dict) else value
                elif kind == "ident":
                    value = _get_property(value, name)
                else:
                    raise WorkflowError(f"bad property access in expression {self.text!r}")
            elif token == ("op", "["):
                self.take()
                key = self.or_()
                self.take("]")
                value = _get_property(value, key)
            else:
                return value

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "number":
            return float(int(text, 16)) if "x" in text.lower() else float(text)
        if kind == "string":
            return text[1:-1].replace("''", "'")
        if kind == "op" and text == "(":
            value = self.or_()
            self.take(")")
            return value
        if kind != "ident":
            raise WorkflowError(f"unexpected {text!r} in expression {self.text!r}")
        if text in ("true", "false"):
            return text == "true"
        if text == "null":
            return None
        if self.peek() == ("op", "("):
            self.take()
            args = []
            if self.peek() != ("op", ")"):
                args.append(self.or_())
                while self.peek() == ("op", ","):
                    self.take()
                    args.append(self.or_())
            self.take(")")
            return self.scope.call(text, args)
        return self.scope.context(text)


class Expressions:
    """Evaluates expressions against a set of contexts."""

    def __init__(
        self,
        contexts: Mapping[str, Any],
        *,
        workspace: Path | None = None,
        status: str = "success",
    ) -> None:
        self.contexts = dict(contexts)
        self.workspace = workspace
        self.status = status  # "success" | "failure": how the job (or its needs) went so far

    def context(self, name: str) -> Any:
        for key, value in self.contexts.items():
            if key.lower() == name.lower():
                return value
        raise WorkflowError(f"unknown context {name!r} (available here: {', '.join(sorted(self.contexts))})")

    def call(self, name: str, args: list[Any]) -> Any:
        lower = name.lower()
        if lower == "success":
            return self.status == "success"
        if lower == "failure":
            return self.status == "failure"
        if lower == "always":
            return True
        if lower == "cancelled":
            return False
        if lower == "contains":
            haystack, needle = args
            if isinstance(haystack, list):
                return any(_equal(item, needle) for item in haystack)
            return to_string(needle).lower() in to_string(haystack).lower()
        if lower == "startswith":
            return to_string(args[0]).lower().startswith(to_string(args[1]).lower())
        if lower == "endswith":
            return to_string(args[0]).lower().endswith(to_string(args[1]).lower())
        if lower == "format":
            template, rest = to_string(args[0]), args[1:]
            return re.sub(r"\{(\d+)\}", lambda m: to_string(rest[int(m.group(1))]), template)
        if lower == "join":
            items = args[0] if isinstance(args[0], list) else [args[0]]
            return (to_string(args[1]) if len(args) > 1 else ",").join(to_string(i) for i in items)
        if lower == "tojson":
            return json.dumps(args[0], indent=2)
        if lower == "fromjson":
            try:
                return json.loads(to_string(args[0]))
            except json.JSONDecodeError as exc:
                raise WorkflowError(f"fromJSON({args[0]!r}): {exc}") from None
        if lower == "hashfiles":
            return self._hash_files([to_string(a) for a in args])
        raise WorkflowError(f"unknown function {name}()")

    def _hash_files(self, patterns: list[str]) -> str:
        if self.workspace is None:
            raise WorkflowError("hashFiles() is only available in steps")
        files = sorted(
            {
                Path(p)
                for pattern in patterns
                for p in glob.glob(str(self.workspace / pattern), recursive=True)
                if Path(p).is_file()
            }
        )
        if not files:
            return ""
        outer = hashlib.sha256()
        for path in files:
            outer.update(hashlib.sha256(path.read_bytes()).digest())
        return outer.hexdigest()

    def evaluate(self, expression: str) -> Any:
        return _Parser(expression, self).parse()

    def interpolate(self, value: Any) -> Any:
        """A YAML value with every `${{ }}` replaced; a string that is one expression keeps its type."""
        if isinstance(value, dict):
            return {k: self.interpolate(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.interpolate(v) for v in value]
        if not isinstance(value, str) or "${{" not in value:
            return value
        whole = re.fullmatch(r"\s*\$\{\{(.*?)\}\}\s*", value, re.DOTALL)
        if whole and "${{" not in whole.group(1):
            return self.evaluate(whole.group(1))
        return re.sub(
            r"\$\{\{(.*?)\}\}", lambda m: to_string(self.evaluate(m.group(1))), value, flags=re.DOTALL
        )

    def condition(self, condition: Any) -> bool:
        """An `if:`; without a status function it means `success() && (condition)`."""
        if condition is None:
            return self.status == "success"
        if isinstance(condition, bool):
            return condition and self.status == "success"
        text = str(condition).strip()
        whole = re.fullmatch(r"\$\{\{(.*)\}\}", text, re.DOTALL)
        if whole:
            text = whole.group(1)
        value = _truthy(self.evaluate(text))
        if not re.search(r"\b(success|failure|always|cancelled)\s*\(", text, re.IGNORECASE):
            value = value and self.status == "success"
        return value


# --------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """What triggered the run: the event name, its ref and its payload ($GITHUB_EVENT_PATH)."""

    name: str
    ref: str
    payload: Mapping[str, Any]
    sha: str = "0" * 40
    head_ref: str = ""
    base_ref: str = ""

    @staticmethod
    def tag_push(tag: str, *, sha: str | None = None) -> Event:
        sha = sha or _head_sha()
        return Event(
            "push", f"refs/tags/{tag}", {"ref": f"refs/tags/{tag}", "after": sha, "created": True}, sha
        )

    @staticmethod
    def dispatch(inputs: Mapping[str, Any], *, ref: str = "refs/heads/main", sha: str | None = None) -> Event:
        # github.event.inputs holds strings; the `inputs` context gets typed values (see WorkflowRun).
        payload = {"inputs": {k: to_string(v) for k, v in inputs.items()}, "ref": ref}
        return Event("workflow_dispatch", ref, payload, sha or _head_sha())

    @staticmethod
    def pull_request(
        number: int, *, head_sha: str, head_ref: str = "feature", base_ref: str = "main", fork: bool = False
    ) -> Event:
        head_repo = "someone/custom-transformer-release" if fork else REPOSITORY
        payload = {
            "action": "synchronize",
            "number": number,
            "pull_request": {
                "number": number,
                "head": {"sha": head_sha, "ref": head_ref, "repo": {"full_name": head_repo, "fork": fork}},
                "base": {"ref": base_ref, "repo": {"full_name": REPOSITORY}},
            },
        }
        return Event(
            "pull_request",
            f"refs/pull/{number}/merge",
            payload,
            "1" * 40,
            head_ref=head_ref,
            base_ref=base_ref,
        )

    @staticmethod
    def workflow_run(
        triggering: WorkflowRun,
        *,
        conclusion: str = "success",
        head_sha: str | None = None,
        head_branch: str = "feature",
    ) -> Event:
        """The completion of `triggering` (a run of another workflow), delivered on the default branch."""
        head = head_sha or triggering.event.payload.get("pull_request", {}).get("head", {}).get("sha", "")
        payload = {
            "action": "completed",
            "workflow_run": {
                "id": triggering.run_id,
                "name": triggering.workflow.name,
                "event": triggering.event.name,
                "conclusion": conclusion,
                "head_sha": head,
                "head_branch": head_branch,
                "head_repository": {"full_name": REPOSITORY},
                "pull_requests": [],
            },
        }
        return Event("workflow_run", "refs/heads/main", payload, _head_sha())


def _head_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "0" * 40


# --------------------------------------------------------------------------------------------- workflows


@dataclass
class Workflow:
    path: Path
    data: dict
    text: str

    @classmethod
    def load(cls, path: str | Path) -> Workflow:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        if True in data and "on" not in data:  # YAML 1.1 reads the key `on` as a boolean
            data["on"] = data.pop(True)
        return cls(path, data, text)

    @property
    def name(self) -> str:
        return self.data.get("name") or self.path.name

    @property
    def jobs(self) -> dict[str, dict]:
        return self.data["jobs"]

    @property
    def triggers(self) -> dict:
        on = self.data["on"]
        if isinstance(on, str):
            return {on: None}
        if isinstance(on, list):
            return dict.fromkeys(on)
        return on

    def steps(self, job: str) -> list[dict]:
        return self.jobs[job].get("steps", [])


@dataclass
class StepResult:
    id: str
    name: str
    outcome: str  # "success" | "failure" | "skipped"
    outputs: dict[str, str] = field(default_factory=dict)
    log: str = ""
    uses: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)  # the evaluated `with:` of a `uses:` step
    env: dict[str, str] = field(default_factory=dict)  # the environment the step ran with
    local_equivalent: str | None = None  # what ran instead, for `uses:` steps and the install step
    seconds: float = 0.0


@dataclass
class JobResult:
    name: str
    status: str  # "success" | "failure" | "skipped"
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    summary: str = ""
    workspace: Path | None = None
    environment: dict[str, Any] | None = None
    matrix: dict[str, Any] | None = None

    @property
    def log(self) -> str:
        return "\n".join(f"--- {s.name} [{s.outcome}]\n{s.log}" for s in self.steps)

    def step(self, step_id: str) -> StepResult:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(f"no step {step_id!r} in job {self.name}; steps: {[s.id for s in self.steps]}")

    def step_named(self, name: str) -> StepResult:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no step named {name!r} in job {self.name}; steps: {[s.name for s in self.steps]}")

    def describe_failure(self) -> str:
        failed = [s for s in self.steps if s.outcome == "failure"]
        if not failed:
            return f"job {self.name}: {self.status}"
        step = failed[0]
        return f"job {self.name}, step {step.name!r} failed:\n{step.log[-6000:]}"


# --------------------------------------------------------------------------------------------- fake GitHub API


class FakeGitHub:
    """A slice of GitHub for the steps that talk to it: pull requests, their comments, tags and releases.

    Two clients use it: actions/github-script (through the node harness: `github.rest...`) and the GitHub CLI
    (`gh release create`, a fake `gh` executable first on PATH in runs given this FakeGitHub). The state is a
    JSON file that both read and write; tests seed it and read it back.
    """

    def __init__(
        self, path: Path, *, pulls: Mapping[int, str] | None = None, tags: Iterable[str] = ()
    ) -> None:
        self.path = Path(path)
        owner, repo = REPOSITORY.split("/")
        self._save(
            {
                "owner": owner,
                "repo": repo,
                "pulls": {str(n): {"head_sha": sha} for n, sha in (pulls or {}).items()},
                "comments": [],
                "tags": list(tags),
                "releases": [],
                "next_id": 1001,
                "calls": [],
            }
        )
        self.bin_dir = self.path.parent / f"{self.path.stem}-bin"
        self.bin_dir.mkdir(exist_ok=True)
        gh = self.bin_dir / "gh"
        gh.write_text(f"#!{sys.executable}\nSTATE = {str(self.path)!r}\n{_FAKE_GH}", encoding="utf-8")
        gh.chmod(0o755)

    def _load(self) -> dict:
        return json.loads(self.path.read_text(encoding="utf-8"))

    def _save(self, state: dict) -> None:
        self.path.write_text(json.dumps(state, indent=2), encoding="utf-8")

    def set_head(self, number: int, sha: str) -> None:
        state = self._load()
        state["pulls"][str(number)] = {"head_sha": sha}
        self._save(state)

    def add_comment(self, number: int, body: str, *, user: str = "a-reviewer") -> int:
        state = self._load()
        comment_id = state["next_id"]
        state["next_id"] += 1
        state["comments"].append(
            {
                "id": comment_id,
                "issue_number": number,
                "body": body,
                "user": {"login": user, "type": "User"},
                "html_url": f"{SERVER_URL}/{REPOSITORY}/pull/{number}#issuecomment-{comment_id}",
            }
        )
        self._save(state)
        return comment_id

    def comments(self, number: int) -> list[dict]:
        return [c for c in self._load()["comments"] if c["issue_number"] == number]

    @property
    def calls(self) -> list[list]:
        return self._load()["calls"]

    @property
    def releases(self) -> list[dict]:
        return self._load()["releases"]


_FAKE_GH = r"""
# A stand-in for the GitHub CLI: `gh release create` against the FakeGitHub state next to this folder.
import json, os, sys
from pathlib import Path

state_path = Path(STATE)  # noqa: F821 -- written above this text by FakeGitHub
state = json.loads(state_path.read_text())
args = sys.argv[1:]
if not os.environ.get("GH_TOKEN"):
    sys.exit("gh: To use GitHub CLI in a GitHub Actions workflow, set the GH_TOKEN environment variable.")
if os.environ.get("GH_REPO") != f"{state['owner']}/{state['repo']}":
    sys.exit(f"fake gh: GH_REPO is {os.environ.get('GH_REPO')!r}, not this repository")
if args[:2] != ["release", "create"] or len(args) < 3 or args[2].startswith("-"):
    sys.exit(f"fake gh does not implement: gh {' '.join(args)}")
tag, options, rest = args[2], {}, args[3:]
while rest:
    flag = rest.pop(0)
    name, eq, value = flag.partition("=")
    if name in ("--verify-tag", "--prerelease", "--draft", "--latest") and not eq:
        options[name] = "true"
    elif name in ("--verify-tag", "--prerelease", "--draft", "--latest"):
        if value not in ("true", "false"):
            sys.exit(f"invalid argument {value!r} for {name!r}")
        options[name] = value
    elif name in ("--title", "--notes-file", "--notes", "--target"):
        options[name] = value if eq else rest.pop(0)
    else:
        sys.exit(f"fake gh does not implement the flag {flag!r}")
if options.get("--verify-tag") == "true" and tag not in state["tags"]:
    sys.exit(f"tag {tag} doesn't exist in the repo, aborting due to --verify-tag flag")
if any(r["tag"] == tag for r in state["releases"]):
    sys.exit("a release with the same tag name already exists: " + tag)
notes = Path(options["--notes-file"]).read_text() if "--notes-file" in options else options.get("--notes", "")
state["releases"].append(
    {"tag": tag, "title": options.get("--title", tag), "notes": notes,
     "prerelease": options.get("--prerelease") == "true", "draft": options.get("--draft") == "true"}
)
state["calls"].append(["gh release create", tag])
state_path.write_text(json.dumps(state, indent=2))
print(f"https://github.com/{state['owner']}/{state['repo']}/releases/tag/{tag}")
"""


_GITHUB_SCRIPT_HARNESS = r"""
// Runs an actions/github-script `script` the way the action does: the body of an async function of
// (require, github, context, core, ...), with `github` backed by the FakeGitHub state file.
const fs = require("fs");
const statePath = process.env.FAKE_GITHUB_STATE;
const state = JSON.parse(fs.readFileSync(statePath, "utf8"));
const context = JSON.parse(fs.readFileSync(process.env.FAKE_GITHUB_CONTEXT, "utf8"));
const script = fs.readFileSync(process.env.FAKE_GITHUB_SCRIPT, "utf8");
const BOT = { login: "github-actions[bot]", type: "Bot" };

function notFound(message) { const e = new Error(`Not Found: ${message}`); e.status = 404; return e; }
function checkRepo(p) {
  if (p.owner !== state.owner || p.repo !== state.repo) throw notFound(`repository ${p.owner}/${p.repo}`);
}
function pull(number) {
  const pr = state.pulls[String(number)];
  if (!pr) throw notFound(`pull request #${number}`);
  return pr;
}
function htmlUrl(c) { return `https://github.com/${state.owner}/${state.repo}/pull/${c.issue_number}#issuecomment-${c.id}`; }

const rest = {
  pulls: {
    get: async (p) => {
      checkRepo(p); const pr = pull(p.pull_number); state.calls.push(["pulls.get", p.pull_number]);
      return { data: { number: p.pull_number, head: { sha: pr.head_sha } } };
    },
  },
  issues: {
    listComments: async (p) => {
      checkRepo(p); pull(p.issue_number); state.calls.push(["issues.listComments", p.issue_number, p.page || 1]);
      const per = p.per_page || 30, page = p.page || 1;
      const all = state.comments.filter((c) => c.issue_number === p.issue_number);
      return { data: all.slice((page - 1) * per, page * per) };
    },
    createComment: async (p) => {
      checkRepo(p); pull(p.issue_number); state.calls.push(["issues.createComment", p.issue_number]);
      const c = { id: state.next_id++, issue_number: p.issue_number, body: p.body, user: BOT };
      c.html_url = htmlUrl(c); state.comments.push(c);
      return { data: c };
    },
    updateComment: async (p) => {
      checkRepo(p); state.calls.push(["issues.updateComment", p.comment_id]);
      const c = state.comments.find((x) => x.id === p.comment_id);
      if (!c) throw notFound(`comment ${p.comment_id}`);
      if (c.user.login !== BOT.login) { const e = new Error("Forbidden: not your comment"); e.status = 403; throw e; }
      c.body = p.body;
      return { data: c };
    },
  },
};

// Any endpoint the fake does not implement fails loudly instead of returning undefined.
function strict(obj, where) {
  return new Proxy(obj, {
    get(target, key) {
      if (typeof key === "symbol" || key === "then") return target[key];
      if (!(key in target)) throw new Error(`FakeGitHub does not implement ${where}.${String(key)}`);
      const value = target[key];
      return value && typeof value === "object" ? strict(value, `${where}.${String(key)}`) : value;
    },
  });
}

const github = {
  rest: strict(rest, "github.rest"),
  paginate: async (method, params) => {
    const out = [], per = params.per_page || 30;
    for (let page = 1; ; page++) {
      const { data } = await method({ ...params, page });
      out.push(...data);
      if (data.length < per) return out;
    }
  },
};

function command(name, message) { console.log(`::${name}::${message}`); }
const core = {
  setFailed: (m) => { process.exitCode = 1; command("error", m); },
  info: (m) => console.log(m),
  debug: (m) => command("debug", m),
  notice: (m) => command("notice", m),
  warning: (m) => command("warning", m),
  error: (m) => command("error", m),
  setOutput: (name, value) => fs.appendFileSync(process.env.GITHUB_OUTPUT, `${name}=${value}\n`),
};

const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
const run = new AsyncFunction("require", "github", "context", "core", script);
run(require, github, context, core)
  .catch((err) => { process.exitCode = 1; command("error", `Unhandled error: ${err && err.stack || err}`); })
  .finally(() => fs.writeFileSync(statePath, JSON.stringify(state, null, 2)));
"""


# --------------------------------------------------------------------------------------------- running


def parse_file_command(text: str) -> dict[str, str]:
    """Parse $GITHUB_OUTPUT / $GITHUB_ENV: `name=value` lines and `name<<DELIMITER` blocks."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        eq, heredoc = line.find("="), line.find("<<")
        if heredoc != -1 and (eq == -1 or heredoc < eq):
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            body = []
            while i < len(lines) and lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise WorkflowError(f"unterminated {name}<<{delimiter} block in a file command")
            i += 1
            values[name] = "\n".join(body)
        elif eq != -1:
            values[line[:eq]] = line[eq + 1 :]
        else:
            raise WorkflowError(f"bad file command line {line!r}")
    return values


def checkout_files(repo: Path = REPO_ROOT) -> list[str]:
    """What a checkout of the working tree holds: tracked files and untracked ones that are not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    )
    return sorted({p for p in out.stdout.decode().split("\0") if p and (repo / p).is_file()})


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


class WorkflowRun:
    """One run of a workflow: its event, secrets and variables, and the jobs run so far."""

    _next_run_id = 4242

    def __init__(
        self,
        workflow: Workflow,
        event: Event,
        *,
        root: Path,
        host_env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        variables: Mapping[str, str] | None = None,
        github_api: FakeGitHub | None = None,
        artifacts: Path | None = None,
    ) -> None:
        self.workflow = workflow
        self.event = event
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts = Path(artifacts) if artifacts is not None else self.root / "artifacts"
        WorkflowRun._next_run_id += 1
        self.run_id = WorkflowRun._next_run_id
        self.secrets = {"GITHUB_TOKEN": "ghs_faketoken0000000000", **(secrets or {})}
        self.vars = dict(variables or {})
        self.github_api = github_api
        self.jobs: dict[str, JobResult] = {}
        self.unset_outputs: list[str] = []
        self.host_env = {
            k: v
            for k, v in (host_env if host_env is not None else os.environ).items()
            if (k in HOST_ENV_ALLOWED or k.startswith(HOST_ENV_PREFIXES)) and k not in HOST_ENV_DENIED
        }
        bin_dirs = [str(Path(sys.executable).parent)]
        if github_api is not None:
            bin_dirs.insert(0, str(github_api.bin_dir))  # its fake `gh` before any real one
        self.host_env["PATH"] = os.pathsep.join([*bin_dirs, self.host_env.get("PATH", os.defpath)])
        self.event_path = self.root / f"event-{self.run_id}.json"
        self.event_path.write_text(json.dumps(dict(event.payload), indent=2), encoding="utf-8")

    # -- contexts ------------------------------------------------------------------------------

    @property
    def inputs(self) -> dict[str, Any]:
        """The typed `inputs` context: declared defaults, given values, booleans as booleans."""
        if self.event.name != "workflow_dispatch":
            return {}
        declared = (self.workflow.triggers.get("workflow_dispatch") or {}).get("inputs") or {}
        given = self.event.payload.get("inputs", {})
        unknown = set(given) - set(declared)
        if unknown:
            raise WorkflowError(f"inputs {sorted(unknown)} are not declared by {self.workflow.path.name}")
        values = {}
        for name, spec in declared.items():
            spec = spec or {}
            if name not in given and spec.get("required") and "default" not in spec:
                raise WorkflowError(f"required input {name!r} not given")
            raw = given.get(name, spec.get("default"))
            if spec.get("type") == "boolean":
                values[name] = raw if isinstance(raw, bool) else str(raw).lower() == "true"
            elif spec.get("type") == "number":
                values[name] = _to_number(raw)
            else:
                values[name] = "" if raw is None else str(raw)
        return values

    def _github_context(self, job: str, workspace: Path) -> dict[str, Any]:
        ref = self.event.ref
        ref_type = "tag" if ref.startswith("refs/tags/") else "branch"
        ref_name = re.sub(r"^refs/(tags|heads)/", "", ref)
        if ref.startswith("refs/pull/"):
            ref_name = ref.removeprefix("refs/pull/")
        return {
            "event_name": self.event.name,
            "event": dict(self.event.payload),
            "ref": ref,
            "ref_name": ref_name,
            "ref_type": ref_type,
            "ref_protected": False,
            "head_ref": self.event.head_ref,
            "base_ref": self.event.base_ref,
            "sha": self.event.sha,
            "repository": REPOSITORY,
            "repository_owner": REPOSITORY.split("/")[0],
            "server_url": SERVER_URL,
            "api_url": "https://api.github.com",
            "run_id": str(self.run_id),
            "run_number": "7",
            "run_attempt": "1",
            "workflow": self.workflow.name,
            "job": job,
            "actor": "maintainer",
            "triggering_actor": "maintainer",
            "workspace": str(workspace),
            "token": self.secrets["GITHUB_TOKEN"],
            "action": "",
        }

    def _runner_env(self, github: Mapping[str, Any], paths: Mapping[str, Path]) -> dict[str, str]:
        return {
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_EVENT_NAME": github["event_name"],
            "GITHUB_EVENT_PATH": str(self.event_path),
            "GITHUB_REF": github["ref"],
            "GITHUB_REF_NAME": github["ref_name"],
            "GITHUB_REF_TYPE": github["ref_type"],
            "GITHUB_REF_PROTECTED": "false",
            "GITHUB_HEAD_REF": github["head_ref"],
            "GITHUB_BASE_REF": github["base_ref"],
            "GITHUB_SHA": github["sha"],
            "GITHUB_REPOSITORY": github["repository"],
            "GITHUB_REPOSITORY_OWNER": github["repository_owner"],
            "GITHUB_SERVER_URL": github["server_url"],
            "GITHUB_API_URL": github["api_url"],
            "GITHUB_RUN_ID": github["run_id"],
            "GITHUB_RUN_NUMBER": github["run_number"],
            "GITHUB_RUN_ATTEMPT": github["run_attempt"],
            "GITHUB_WORKFLOW": github["workflow"],
            "GITHUB_JOB": github["job"],
            "GITHUB_ACTOR": github["actor"],
            "GITHUB_TRIGGERING_ACTOR": github["triggering_actor"],
            "GITHUB_WORKSPACE": str(paths["workspace"]),
            "RUNNER_OS": "Linux",
            "RUNNER_ARCH": "X64",
            "RUNNER_NAME": "local-test-runner",
            "RUNNER_ENVIRONMENT": "github-hosted",
            "RUNNER_TEMP": str(paths["temp"]),
            "RUNNER_TOOL_CACHE": str(paths["tool_cache"]),
            "HOME": str(paths["home"]),
        }

    def _record_unset(self, reference: str) -> None:
        if reference not in self.unset_outputs:
            self.unset_outputs.append(reference)

    # -- jobs ----------------------------------------------------------------------------------

    def run_all(self) -> dict[str, JobResult]:
        """Every job, each after its needs. Not for workflows with matrix jobs: run those with `run_job`."""
        if any(spec.get("strategy", {}).get("matrix") is not None for spec in self.workflow.jobs.values()):
            raise WorkflowError("run_all does not expand matrices; use matrix() and run_job(job, matrix=...)")
        pending = list(self.workflow.jobs)
        while pending:
            ready = [j for j in pending if all(n in self.jobs for n in _needs(self.workflow.jobs[j]))]
            if not ready:
                raise WorkflowError(f"unsatisfiable needs among {pending}")
            for job in ready:
                self.run_job(job)
                pending.remove(job)
        return self.jobs

    def _needs_context(self, job: str) -> tuple[dict[str, Any], str]:
        needs = {}
        status = "success"
        for need in _needs(self.workflow.jobs[job]):
            if need not in self.jobs:
                raise WorkflowError(f"job {job} needs {need}, which has not run in this workflow run")
            result = self.jobs[need]
            outputs: dict = (
                _MissingOutputs(result.outputs, f"needs.{need}", self._record_unset)
                if result.status == "success"
                else dict(result.outputs)
            )
            needs[need] = {"result": result.status, "outputs": outputs}
            if result.status != "success":
                status = "failure" if result.status == "failure" else "skipped"
        return needs, status

    def matrix(self, job: str) -> list[dict[str, Any]]:
        """The matrix combinations of `job` (after its needs ran), as GitHub expands them."""
        spec = self.workflow.jobs[job].get("strategy", {}).get("matrix")
        if spec is None:
            return [{}]
        needs, _ = self._needs_context(job)
        scope = Expressions(
            {
                "github": self._github_context(job, self.root),
                "inputs": self.inputs,
                "needs": needs,
                "vars": self.vars,
            }
        )
        spec = scope.interpolate(spec)
        if not isinstance(spec, dict):
            raise WorkflowError(f"the matrix of {job} is not a mapping: {spec!r}")
        include = spec.pop("include", []) or []
        exclude = spec.pop("exclude", []) or []
        for name, values in spec.items():
            if not isinstance(values, list) or not values:
                raise WorkflowError(f"matrix.{name} of {job} must be a non-empty list, got {values!r}")
        combos = (
            [dict(zip(spec, values, strict=True)) for values in itertools.product(*spec.values())]
            if spec
            else []
        )
        combos = [c for c in combos if not any(all(c.get(k) == v for k, v in e.items()) for e in exclude)]
        return combos + list(include) or [{}]

    def run_job(self, job: str, *, matrix: Mapping[str, Any] | None = None) -> JobResult:
        spec = self.workflow.jobs[job]
        if "uses" in spec:
            raise WorkflowError(f"job {job} calls a reusable workflow; not supported here")
        if spec.get("strategy", {}).get("matrix") is not None and matrix is None:
            raise WorkflowError(f"job {job} has a matrix: pass one of WorkflowRun.matrix({job!r})")
        key = job if not matrix else f"{job} ({', '.join(to_string(v) for v in matrix.values())})"
        job_dir = self.root / f"run-{self.run_id}" / re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        if job_dir.exists():
            raise WorkflowError(f"job {key} already ran in this workflow run")
        paths = {name: job_dir / name for name in ("workspace", "temp", "home", "tool_cache", "files")}
        for path in paths.values():
            path.mkdir(parents=True)
        github = self._github_context(job, paths["workspace"])
        needs, needs_status = self._needs_context(job)
        base_contexts = {
            "github": github,
            "inputs": self.inputs,
            "secrets": self.secrets,
            "vars": self.vars,
            "needs": needs,
            "matrix": dict(matrix or {}),
            "strategy": {"fail-fast": True, "job-index": 0, "job-total": 1},
            "runner": {"os": "Linux", "arch": "X64", "temp": str(paths["temp"]), "name": "local-test-runner"},
            "job": {"status": "success"},
        }
        job_scope = Expressions(base_contexts, status="success" if needs_status == "success" else "failure")
        result = JobResult(
            name=key, status="skipped", workspace=paths["workspace"], matrix=dict(matrix or {})
        )
        if needs_status == "skipped" and "if" not in spec:
            self.jobs[key] = result
            return result
        if not job_scope.condition(spec.get("if")):
            self.jobs[key] = result
            return result

        workflow_env = {
            k: to_string(v) for k, v in job_scope.interpolate(self.workflow.data.get("env") or {}).items()
        }
        job_scope.contexts["env"] = dict(workflow_env)
        job_env = {k: to_string(v) for k, v in job_scope.interpolate(spec.get("env") or {}).items()}
        env_context = {**workflow_env, **job_env}
        if isinstance(spec.get("environment"), str):
            result.environment = {"name": spec["environment"]}
        elif spec.get("environment"):
            result.environment = {"name": job_scope.interpolate(spec["environment"].get("name"))}
        timeout = float(job_scope.interpolate(spec.get("timeout-minutes", 360))) * 60
        deadline = time.monotonic() + timeout
        defaults = {
            **((self.workflow.data.get("defaults") or {}).get("run") or {}),
            **((spec.get("defaults") or {}).get("run") or {}),
        }
        runner_env = self._runner_env(github, paths)
        added_env: dict[str, str] = {}
        added_path: list[str] = []
        steps_context: dict[str, Any] = {}
        status = "success"
        summaries: list[str] = []

        for index, step in enumerate(spec.get("steps", [])):
            step_id = step.get("id") or f"__{index}"
            contexts = {**base_contexts, "steps": steps_context, "env": {**env_context, **added_env}}
            scope = Expressions(contexts, workspace=paths["workspace"], status=status)
            name = (
                to_string(scope.interpolate(step.get("name")))
                or step.get("uses")
                or step.get("run", "").split("\n")[0]
            )
            if not scope.condition(step.get("if")):
                result.steps.append(StepResult(step_id, name, "skipped"))
                steps_context[step_id] = {"outcome": "skipped", "conclusion": "skipped", "outputs": {}}
                continue
            step_env = {k: to_string(v) for k, v in scope.interpolate(step.get("env") or {}).items()}
            env = {**self.host_env, **runner_env, **env_context, **added_env, **step_env}
            if added_path:
                env["PATH"] = os.pathsep.join([*reversed(added_path), env["PATH"]])
            files = {
                name: paths["files"] / f"{index}-{name}"
                for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY")
            }
            for path in files.values():
                path.write_text("", encoding="utf-8")
            env.update({k: str(v) for k, v in files.items()})
            started = time.monotonic()
            step_result = StepResult(step_id, name, "success", env=dict(env))
            try:
                if "uses" in step:
                    self._run_action(step, scope, env, paths, step_result, deadline)
                elif step_id == INSTALL_STEP_ID:
                    step_result.local_equivalent = (
                        f"already installed: {Path(sys.executable).parent} is first on PATH"
                    )
                else:
                    self._run_shell(step, defaults, env, paths, step_result, deadline)
            except WorkflowError as exc:
                step_result.outcome = "failure"
                step_result.log += f"\n[workflow_runner] {exc}"
            step_result.seconds = time.monotonic() - started
            step_result.outputs.update(parse_file_command(files["GITHUB_OUTPUT"].read_text(encoding="utf-8")))
            added_env.update(parse_file_command(files["GITHUB_ENV"].read_text(encoding="utf-8")))
            added_path += [
                p for p in files["GITHUB_PATH"].read_text(encoding="utf-8").splitlines() if p.strip()
            ]
            summaries.append(files["GITHUB_STEP_SUMMARY"].read_text(encoding="utf-8"))
            result.steps.append(step_result)
            outputs = _MissingOutputs(step_result.outputs, f"steps.{step_id}", self._record_unset)
            steps_context[step_id] = {
                "outcome": step_result.outcome,
                "conclusion": step_result.outcome,
                "outputs": outputs if step_result.outcome == "success" else dict(step_result.outputs),
            }
            if step_result.outcome == "failure" and not step.get("continue-on-error"):
                status = "failure"

        result.status = status
        result.summary = "".join(summaries)
        final = Expressions(
            {**base_contexts, "steps": steps_context, "env": env_context},
            workspace=paths["workspace"],
            status=status,
        )
        if status == "success":
            result.outputs = {
                k: to_string(final.interpolate(v)) for k, v in (spec.get("outputs") or {}).items()
            }
        if isinstance(spec.get("environment"), dict) and "url" in spec["environment"]:
            result.environment = {
                **(result.environment or {}),
                "url": to_string(final.interpolate(spec["environment"]["url"])),
            }
        self.jobs[key] = result
        return result

    # -- steps ---------------------------------------------------------------------------------

    def _run_shell(
        self,
        step: Mapping[str, Any],
        defaults: Mapping[str, Any],
        env: Mapping[str, str],
        paths: Mapping[str, Path],
        result: StepResult,
        deadline: float,
    ) -> None:
        script = step["run"]
        if "${{" in script:
            raise WorkflowError("`${{ }}` inside `run:`: pass values through `env:` instead")
        shell = step.get("shell", defaults.get("shell"))
        if shell == "bash":
            argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
        elif shell is None:
            argv = ["bash", "-e"]
        else:
            raise WorkflowError(f"shell {shell!r} is not supported by the local runner")
        workdir = step.get("working-directory", defaults.get("working-directory"))
        cwd = paths["workspace"] / workdir if workdir else paths["workspace"]
        script_path = paths["temp"] / f"step-{result.id}-{time.monotonic_ns()}.sh"
        script_path.write_text(script, encoding="utf-8")
        self._subprocess(
            [*argv, str(script_path)], cwd=cwd, env=env, result=result, deadline=deadline, step=step
        )

    def _subprocess(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        result: StepResult,
        deadline: float,
        step: Mapping[str, Any],
    ) -> None:
        timeout = deadline - time.monotonic()
        if "timeout-minutes" in step:
            timeout = min(timeout, float(step["timeout-minutes"]) * 60)
        if timeout <= 0:
            raise WorkflowError("the job's timeout-minutes ran out")
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            result.log += (exc.stdout or "") if isinstance(exc.stdout, str) else ""
            raise WorkflowError(f"timed out after {timeout:.0f} s") from None
        result.log += proc.stdout
        if proc.returncode != 0:
            result.outcome = "failure"
            result.log += f"\n[workflow_runner] exit code {proc.returncode}"

    def _run_action(
        self,
        step: Mapping[str, Any],
        scope: Expressions,
        env: Mapping[str, str],
        paths: Mapping[str, Path],
        result: StepResult,
        deadline: float,
    ) -> None:
        uses = step["uses"]
        action, _, ref = uses.partition("@")
        result.uses = uses
        handler = LOCAL_ACTIONS.get(action)
        if handler is None:
            raise WorkflowError(f"no local equivalent for {action}; add one to LOCAL_ACTIONS")
        result.inputs = {k: scope.interpolate(v) for k, v in (step.get("with") or {}).items()}
        handler(self, result.inputs, env=env, paths=paths, result=result, deadline=deadline, step=step)

    def _home(self, text: str, paths: Mapping[str, Path]) -> Path:
        if text.startswith("~/") or text == "~":
            return paths["home"] / text[2:]
        path = Path(text)
        return path if path.is_absolute() else paths["workspace"] / path

    # local equivalents of actions (see the module docstring)

    def _checkout(self, inputs, *, env, paths, result, deadline, step) -> None:
        if str(inputs.get("persist-credentials", "true")).lower() != "false":
            raise WorkflowError("actions/checkout without `persist-credentials: false`")
        unsupported = set(inputs) - {"persist-credentials", "fetch-depth"}
        if unsupported:
            raise WorkflowError(f"checkout inputs {sorted(unsupported)} have no local equivalent")
        files = checkout_files()
        for relative in files:
            target = paths["workspace"] / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / relative, target)
        result.local_equivalent = f"copied the working tree ({len(files)} files) into the workspace"

    def _setup_python(self, inputs, *, env, paths, result, deadline, step) -> None:
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        wanted = to_string(inputs.get("python-version", ""))
        if wanted != here:
            raise WorkflowError(f"setup-python asks for {wanted!r}; the tests run on Python {here}")
        unsupported = set(inputs) - {"python-version"}
        if unsupported:
            raise WorkflowError(f"setup-python inputs {sorted(unsupported)} have no local equivalent")
        result.outputs.update({"python-version": here, "python-path": sys.executable})
        result.local_equivalent = f"{sys.executable} ({here}), its bin folder first on PATH"

    def _cache(self, inputs, *, env, paths, result, deadline, step) -> None:
        for name in ("key", "path"):
            if not to_string(inputs.get(name, "")).strip():
                raise WorkflowError(f"actions/cache: {name} is empty")
        result.outputs["cache-hit"] = "false"
        result.local_equivalent = f"cache miss for key {inputs['key']}"

    def _upload_artifact(self, inputs, *, env, paths, result, deadline, step) -> None:
        name = to_string(inputs.get("name", "artifact"))
        if not name or any(c in name for c in '"/:<>|*?\\\r\n'):
            raise WorkflowError(f"invalid artifact name {name!r}")
        targets = [
            self._home(line.strip(), paths)
            for line in to_string(inputs.get("path", "")).splitlines()
            if line.strip()
        ]
        if not targets:
            raise WorkflowError("upload-artifact: no path")
        hidden_ok = str(inputs.get("include-hidden-files", "false")).lower() == "true"
        found: list[tuple[Path, Path]] = []  # (file, search root)
        for target in targets:
            matches = (
                [Path(p) for p in glob.glob(str(target), recursive=True)]
                if glob.has_magic(str(target))
                else [target]
            )
            for match in matches:
                if match.is_dir():
                    found += [(f, match) for f in sorted(match.rglob("*")) if f.is_file()]
                elif match.is_file():
                    found.append((match, match.parent))
        if len(targets) == 1 and targets[0].is_dir():
            root = targets[0]
        else:
            root = (
                Path(os.path.commonpath([str(f.parent) for f, _ in found])) if found else paths["workspace"]
            )
        files = [f for f, search in found if hidden_ok or not _is_hidden(f.relative_to(search))]
        if not files:
            mode = inputs.get("if-no-files-found", "warn")
            if mode == "error":
                raise WorkflowError(f"upload-artifact: no files found at {[str(t) for t in targets]}")
            result.log += f"no files found for artifact {name} ({mode})\n"
            return
        dest = self.artifacts / str(self.run_id) / name
        if dest.exists() and str(inputs.get("overwrite", "false")).lower() != "true":
            raise WorkflowError(f"an artifact named {name!r} already exists in this run")
        shutil.rmtree(dest, ignore_errors=True)
        for file in files:
            target = dest / file.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
        result.outputs["artifact-id"] = str(abs(hash((self.run_id, name))) % 10**9)
        result.local_equivalent = f"copied {len(files)} files to {dest}"

    def _download_artifact(self, inputs, *, env, paths, result, deadline, step) -> None:
        name = to_string(inputs.get("name", ""))
        if not name:
            raise WorkflowError("download-artifact without a name is not supported here")
        run_id = to_string(inputs.get("run-id", "")) or str(self.run_id)
        if run_id != str(self.run_id) and not to_string(inputs.get("github-token", "")):
            raise WorkflowError("download-artifact from another run needs github-token")
        source = self.artifacts / run_id / name
        if not source.is_dir():
            raise WorkflowError(f"no artifact {name!r} in run {run_id}")
        dest = self._home(to_string(inputs.get("path", "")) or ".", paths)
        shutil.copytree(source, dest, dirs_exist_ok=True)
        result.outputs["download-path"] = str(dest)
        result.local_equivalent = f"copied artifact {name} of run {run_id} to {dest}"

    def _github_script(self, inputs, *, env, paths, result, deadline, step) -> None:
        if self.github_api is None:
            raise WorkflowError("actions/github-script needs WorkflowRun(github_api=FakeGitHub(...))")
        node = shutil.which("node", path=env.get("PATH"))
        if node is None:
            raise WorkflowError("actions/github-script needs node on PATH")
        script = to_string(inputs.get("script", ""))
        if "${{" in to_string((step.get("with") or {}).get("script", "")):
            raise WorkflowError("`${{ }}` inside a github-script: pass values through `env:` instead")
        work = paths["temp"] / f"github-script-{result.id}"
        work.mkdir()
        (work / "harness.js").write_text(_GITHUB_SCRIPT_HARNESS, encoding="utf-8")
        (work / "script.js").write_text(script, encoding="utf-8")
        owner, repo = REPOSITORY.split("/")
        context = {
            "payload": dict(self.event.payload),
            "eventName": self.event.name,
            "sha": self.event.sha,
            "ref": self.event.ref,
            "workflow": self.workflow.name,
            "runId": self.run_id,
            "actor": "maintainer",
            "serverUrl": SERVER_URL,
            "apiUrl": "https://api.github.com",
            "repo": {"owner": owner, "repo": repo},
        }
        (work / "context.json").write_text(json.dumps(context), encoding="utf-8")
        node_env = {
            **env,
            "FAKE_GITHUB_STATE": str(self.github_api.path),
            "FAKE_GITHUB_CONTEXT": str(work / "context.json"),
            "FAKE_GITHUB_SCRIPT": str(work / "script.js"),
        }
        self._subprocess(
            [node, str(work / "harness.js")],
            cwd=paths["workspace"],
            env=node_env,
            result=result,
            deadline=deadline,
            step=step,
        )
        result.local_equivalent = "node with github = FakeGitHub"


def _needs(spec: Mapping[str, Any]) -> list[str]:
    needs = spec.get("needs") or []
    return [needs] if isinstance(needs, str) else list(needs)


LOCAL_ACTIONS: dict[str, Callable[..., None]] = {
    "actions/checkout": WorkflowRun._checkout,
    "actions/setup-python": WorkflowRun._setup_python,
    "actions/cache": WorkflowRun._cache,
    "actions/upload-artifact": WorkflowRun._upload_artifact,
    "actions/download-artifact": WorkflowRun._download_artifact,
    "actions/github-script": WorkflowRun._github_script,
}


def iter_steps(workflow: Workflow) -> Iterable[tuple[str, int, dict]]:
    for job, spec in workflow.jobs.items():
        for index, step in enumerate(spec.get("steps", [])):
            yield job, index, step


def glob_match(path: str, patterns: Iterable[str]) -> bool:
    """Whether `path` matches one of GitHub's `paths:` filter patterns (`**` crosses folders)."""
    for pattern in patterns:
        regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
        if re.fullmatch(regex, path) or fnmatch.fnmatch(path, pattern):
            return True
    return False


__all__ = [
    "INSTALL_STEP_ID",
    "LOCAL_ACTIONS",
    "Event",
    "Expressions",
    "FakeGitHub",
    "JobResult",
    "StepResult",
    "Workflow",
    "WorkflowError",
    "WorkflowRun",
    "checkout_files",
    "glob_match",
    "iter_steps",
    "parse_file_command",
]
