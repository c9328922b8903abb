"""Run a workflow's jobs here the way a hosted runner would, small on purpose (tests only).

    run = WorkflowRun(Workflow.load(path), Event.tag_push("v1.0.0"), root=tmp_path, host_env=env, secrets={...})
    build = run.run_job("build")      # JobResult: status, outputs, steps, summary, log; `needs` are earlier jobs

Every `run:` step runs as written (`bash --noprofile --norc -eo pipefail`) in the job's own workspace, with a
runner's GITHUB_*/RUNNER_* variables, fresh GITHUB_OUTPUT/GITHUB_ENV/GITHUB_STEP_SUMMARY files, the workflow's,
job's and step's `env:`, and from the host only an allow-list (never HF_TOKEN or RELEASE_*). Not run as written:
the `id: install` step (the tests run in the environment it installs; the locks have their own tests) and a
step a test replaces by id (`replace=`, e.g. keyless signing, which needs GitHub's OIDC). `uses:` steps map to
LOCAL_ACTIONS: checkout copies the working tree, caches miss, artifacts are folders in <root>/artifacts/<run
id>/; `gh` is a fake over FakeGitHub's JSON file. Expressions are translated to Python; reading an output that
a step or job which ran never set lands in `unset_outputs`: the names the YAML reads are the names the CLI writes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_STEP_ID = "install"
REPOSITORY = "custom-transformer/custom-transformer-release"
HOST_ENV = frozenset("PATH LANG LC_ALL TZ TMPDIR SSL_CERT_FILE OMP_NUM_THREADS NO_PROXY no_proxy".split())
GITHUB_VARIABLES = "event_name ref ref_name ref_type sha actor repository workspace".split()
FILE_COMMANDS = ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_STEP_SUMMARY")
HOST_DENIED = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN"})
_NAMES = "checkout setup-python cache cache/restore cache/save upload-artifact download-artifact"
LOCAL_ACTIONS = frozenset(f"actions/{name}" for name in _NAMES.split())
_TOKENS = re.compile(
    r"('(?:[^']|'')*')|(&&|\|\||!(?!=))|\b(true|false|null)\b|([A-Za-z_][\w-]*(?:\.[\w*-]+)*)(\s*\()?"
)
_STATUS = re.compile(r"\b(success|failure|always)\(")
_WORDS = {"&&": " and ", "||": " or ", "!": " not ", "true": "True", "false": "False", "null": "None"}
_EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)


class WorkflowError(Exception):
    """The workflow cannot run as written here (unknown action, expression in a script, missing artifact)."""


def to_string(value: Any) -> str:
    """How GitHub writes a value into text: null as '', booleans in lower case, objects as JSON."""
    if value is None or isinstance(value, bool):
        return {None: "", True: "true", False: "false"}[value]
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


class Expressions:
    """GitHub's expression language, as far as the workflows use it, translated to Python."""

    def __init__(self, contexts: dict[str, Any], *, status: str = "success", record=lambda ref: None):
        self.contexts, self.status, self.record = contexts, status, record

    def get(self, path: str) -> Any:
        value: Any = self.contexts
        parts = path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(value, dict) or part not in value:
                if i >= 2 and parts[0] in ("steps", "needs") and parts[i - 1] == "outputs":
                    self.record(".".join(parts[: i + 1]))
                return None
            value = value[part]
        return value

    def evaluate(self, text: str) -> Any:
        def swap(m: re.Match) -> str:
            string, op, literal, name, call = m.groups()
            if string or (name and name[0].isdigit()):
                return m[0]
            if op or literal:
                return _WORDS[m[0]]
            return f"_{name.lower()}(" if call else f"_get({name!r})"

        lower = lambda value: to_string(value).lower()  # noqa: E731 -- string comparisons ignore case
        functions = {
            "_contains": lambda a, b: b in a if isinstance(a, list) else lower(b) in lower(a),
            "_startswith": lambda a, b: lower(a).startswith(lower(b)),
            "_format": lambda t, *args: re.sub(r"\{(\d+)\}", lambda m: to_string(args[int(m[1])]), t),
            "_fromjson": json.loads,
            "_hashfiles": self._hash_files,
            "_success": lambda: self.status == "success",
            "_failure": lambda: self.status == "failure",
            "_always": lambda: True,
        }
        return eval(_TOKENS.sub(swap, text), {"__builtins__": {}, "_get": self.get, **functions})

    def _hash_files(self, *patterns: str) -> str:
        root = Path(self.contexts["github"]["workspace"])
        files = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
        return hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in files)).hexdigest()

    def interpolate(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.interpolate(v) for k, v in value.items()}
        if not isinstance(value, str) or "${{" not in value:
            return value
        whole = _EXPRESSION.fullmatch(value.strip())
        if whole and value.count("${{") == 1:
            return self.evaluate(whole[1])
        return _EXPRESSION.sub(lambda m: to_string(self.evaluate(m[1])), value)

    def condition(self, condition: Any) -> bool:
        text = str(condition if condition is not None else "success()").strip()
        text = re.sub(r"^\$\{\{(.*)\}\}$", r"\1", text, flags=re.S)
        return bool(self.evaluate(text if _STATUS.search(text) else f"success() && ({text})"))


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout


@dataclass
class Event:
    name: str
    ref: str
    payload: dict
    sha: str = field(default_factory=lambda: _git("rev-parse", "HEAD").strip())

    @staticmethod
    def tag_push(tag: str) -> Event:
        return Event("push", f"refs/tags/{tag}", {"ref": f"refs/tags/{tag}"})

    @staticmethod
    def dispatch(inputs: dict, *, ref: str = "refs/heads/main") -> Event:
        return Event("workflow_dispatch", ref, {"inputs": dict(inputs)})

    @staticmethod
    def pull_request(number: int, *, head_sha: str) -> Event:
        payload = {"number": number, "pull_request": {"number": number, "head": {"sha": head_sha}}}
        return Event("pull_request", f"refs/pull/{number}/merge", payload)


@dataclass
class Workflow:
    path: Path
    text: str
    data: dict

    @classmethod
    def load(cls, path: str | Path) -> Workflow:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
        return cls(Path(path), text, data)

    @property
    def jobs(self) -> dict[str, dict]:
        return self.data["jobs"]


@dataclass
class StepResult:
    id: str | None
    name: str
    uses: str | None
    outcome: str = "skipped"
    log: str = ""
    env: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    local_equivalent: str | None = None


@dataclass
class JobResult:
    name: str
    status: str = "skipped"
    steps: list[StepResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""

    @property
    def log(self) -> str:
        return "\n".join(f"--- {s.name} [{s.outcome}]\n{s.log}" for s in self.steps)

    def step(self, key: str) -> StepResult:
        return next(s for s in self.steps if key in (s.id, s.name))


class FakeGitHub:
    """The GitHub REST state the `gh` calls read and write: tags, releases, commits whose CI passed, artifacts."""

    def __init__(self, path: Path, *, tags=(), ci_passed=()) -> None:
        self.path = path
        state = {"tags": [*tags], "ci_passed": [*ci_passed], "releases": [], "calls": []}
        state |= {"artifacts": {}, "next_artifact_id": 7001}
        path.write_text(json.dumps(state))

    @property
    def releases(self) -> list[dict]:
        return json.loads(self.path.read_text())["releases"]

    @property
    def calls(self) -> list[list[str]]:
        return json.loads(self.path.read_text())["calls"]

    @property
    def artifacts(self) -> dict[str, str]:
        """Artifact id -> its folder, for the artifacts not deleted."""
        return json.loads(self.path.read_text())["artifacts"]

    def add_artifact(self, folder: Path) -> str:
        state = json.loads(self.path.read_text())
        artifact_id = str(state["next_artifact_id"])
        state["artifacts"][artifact_id], state["next_artifact_id"] = (
            str(folder),
            state["next_artifact_id"] + 1,
        )
        self.path.write_text(json.dumps(state))
        return artifact_id


_FAKE_GH = """import json, os, sys
state_path = os.environ["FAKE_GITHUB_STATE"]; state = json.load(open(state_path)); a = sys.argv[1:]; error = None
if not os.environ.get("GH_TOKEN") or os.environ.get("GH_REPO") != "{repo}": sys.exit("gh: GH_TOKEN and GH_REPO are required")
opt = lambda flag: next((x.split("=", 1)[1] if "=" in x else a[i + 1] for i, x in enumerate(a) if x.split("=")[0] == flag), None)
state["calls"].append(a[:3]); release = next((r for r in state["releases"] if r["tag"] == a[2]), None) if len(a) > 2 else None
if a[:2] == ["run", "list"]: print(len([s for s in state["ci_passed"] if s == opt("--commit") and opt("--status") == "success"]))
elif a[:2] == ["release", "view"] and release is None: error = "release not found"
elif a[:2] in (["release", "create"], ["release", "edit"]):
    if a[2] not in state["tags"]: error = f"tag {a[2]} doesn't exist in the repo, aborting due to --verify-tag flag"
    elif (a[1] == "create") == (release is not None): error = f"gh release {a[1]} {a[2]}: wrong for the current state"
    new = {"tag": a[2], "title": opt("--title"), "notes": open(opt("--notes-file")).read(), "prerelease": opt("--prerelease") == "true", "assets": (release or {}).get("assets", [])}
    state["releases"] = state["releases"] if error else [r for r in state["releases"] if r["tag"] != a[2]] + [new]
elif a[:2] == ["release", "upload"]:
    if release is None: error = f"release {a[2]} not found"
    else: release["assets"] = sorted({*release.get("assets", []), *(os.path.basename(f) for f in a[3:] if not f.startswith("-"))})
elif a[:3] == ["api", "--method", "DELETE"] and a[3].startswith("repos/{repo}/actions/artifacts/"):
    folder = state["artifacts"].pop(a[3].rsplit("/", 1)[1], None)
    if folder is None: error = f"gh: Not Found (HTTP 404): {a[3]}"
    else: import shutil; shutil.rmtree(folder)
elif a[:2] != ["release", "view"]: error = f"fake gh does not implement: {a}"
json.dump(state, open(state_path, "w")); sys.exit(error)
""".replace("{repo}", REPOSITORY)


_FILE_COMMAND = re.compile(r"^([\w-]+)<<(\S+)\n(.*?)\n?^\2$|^([\w-]+)=([^\n]*)$", re.MULTILINE | re.DOTALL)


def _file_command(path: Path) -> dict[str, str]:
    """GITHUB_OUTPUT / GITHUB_ENV lines: `name=value` or the heredoc form `name<<DELIMITER`."""
    found = _FILE_COMMAND.finditer(path.read_text(encoding="utf-8"))
    return {m[1] or m[4]: m[3] if m[1] else m[5] for m in found}


class WorkflowRun:
    def __init__(
        self, workflow, event, *, root, host_env=None, secrets=None, vars=None, github=None, replace=None
    ):
        self.workflow, self.event, self.root, self.github = workflow, event, Path(root), github
        self.host_env, self.secrets, self.vars = dict(host_env or {}), dict(secrets or {}), dict(vars or {})
        self.replace = dict(replace or {})  # step id -> the script run instead (says so in local_equivalent)
        self.run_id = abs(hash((str(root), event.ref))) % 10**9
        self.artifacts = self.root / "artifacts"
        self.jobs: dict[str, JobResult] = {}
        self.unset_outputs: list[str] = []

    def run_all(self) -> dict[str, JobResult]:
        return {job: self.run_job(job) for job in self.workflow.jobs}

    def run_job(self, job: str) -> JobResult:
        spec, result, ref = self.workflow.jobs[job], JobResult(job), self.event.ref
        self.jobs[job] = result
        workspace, home, temp = (self.root / job / part for part in ("workspace", "home", "temp"))
        needs = [spec["needs"]] if isinstance(spec.get("needs"), str) else spec.get("needs", [])
        github = {"event_name": self.event.name, "event": self.event.payload, "ref": ref}
        github |= {"sha": self.event.sha, "ref_name": ref.split("/", 2)[-1]}
        github["ref_type"] = "tag" if ref.startswith("refs/tags/") else "branch"
        github.update(repository=REPOSITORY, workspace=str(workspace), token="ghs_fake", actor="a-maintainer")
        ctx = {"github": github, "inputs": self.event.payload.get("inputs", {}), "secrets": self.secrets}
        ctx |= {"vars": self.vars, "runner": {"os": "Linux", "temp": str(temp)}, "env": {}, "steps": {}}
        ctx["needs"] = {n: {"result": self.jobs[n].status, "outputs": self.jobs[n].outputs} for n in needs}
        record = lambda ref: ref in self.unset_outputs or self.unset_outputs.append(ref)  # noqa: E731
        scope = Expressions(ctx, record=record)
        if any(self.jobs[n].status != "success" for n in needs) or not scope.condition(spec.get("if")):
            return result
        for folder in (workspace, home, temp, self.root / "bin"):
            folder.mkdir(parents=True, exist_ok=True)
        (temp / "event.json").write_text(json.dumps(self.event.payload))
        (self.root / "bin" / "gh").write_text(f"#!{sys.executable}\n{_FAKE_GH}")
        (self.root / "bin" / "gh").chmod(0o755)
        host = {k: v for k, v in self.host_env.items() if k in HOST_ENV or k.startswith("HF_")}
        base = {k: v for k, v in host.items() if k not in HOST_DENIED}
        base |= {f"GITHUB_{k.upper()}": github[k] for k in GITHUB_VARIABLES}
        base |= {"HOME": str(home), "CI": "true", "GITHUB_ACTIONS": "true", "RUNNER_TEMP": str(temp)}
        base |= {"GITHUB_EVENT_PATH": str(temp / "event.json"), "GITHUB_RUN_ID": str(self.run_id)}
        base["FAKE_GITHUB_STATE"] = str(self.github and self.github.path)
        base["PATH"] = f"{self.root / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin"
        texts = lambda values: {k: to_string(scope.interpolate(v)) for k, v in (values or {}).items()}  # noqa: E731
        ctx["env"].update(texts(self.workflow.data.get("env")) | texts(spec.get("env")))
        for index, raw in enumerate(spec["steps"]):
            name = raw.get("name") or raw.get("uses") or raw["run"]
            step = StepResult(raw.get("id"), name, raw.get("uses"))
            result.steps.append(step)
            scope.status = "failure" if any(s.outcome == "failure" for s in result.steps) else "success"
            if not scope.condition(raw.get("if")):
                continue
            step.env = ctx["env"] | texts(raw.get("env"))
            files = {name: temp / f"{name}-{index}" for name in FILE_COMMANDS}
            for path in files.values():
                path.write_text("")
            try:
                if step.uses:
                    step.inputs = scope.interpolate(raw.get("with") or {})
                    step.outcome = self._action(step, workspace)
                elif step.id == INSTALL_STEP_ID:
                    step.outcome, step.local_equivalent = "success", "already installed: the tests run in it"
                elif "${{" in raw["run"]:
                    raise WorkflowError("an expression inside a script: pass values through `env:`")
                else:
                    script = self.replace.get(step.id, raw["run"])
                    step.local_equivalent = None if script == raw["run"] else f"replaced by: {script}"
                    env = base | step.env | {k: str(v) for k, v in files.items()}
                    bash = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script]
                    proc = subprocess.run(bash, cwd=workspace, env=env, capture_output=True, text=True)
                    step.log, step.outcome = (
                        proc.stdout + proc.stderr,
                        ("failure", "success")[proc.returncode == 0],
                    )
            except (WorkflowError, OSError, KeyError) as exc:
                step.log, step.outcome = f"{type(exc).__name__}: {exc}", "failure"
            step.outputs |= _file_command(files["GITHUB_OUTPUT"])
            ctx["env"].update(_file_command(files["GITHUB_ENV"]))
            result.summary += files["GITHUB_STEP_SUMMARY"].read_text()
            ctx["steps"][step.id or f"_{index}"] = {"outcome": step.outcome, "outputs": step.outputs}
        result.status = "failure" if any(s.outcome == "failure" for s in result.steps) else "success"
        result.outputs = texts(spec.get("outputs"))
        return result

    def _action(self, step: StepResult, workspace: Path) -> str:
        action, inputs = step.uses.split("@")[0], step.inputs
        path = Path(inputs.get("path") or ".")
        path = path if path.is_absolute() else workspace / path
        stored = self.artifacts / str(self.run_id) / str(inputs.get("name"))
        if action not in LOCAL_ACTIONS:
            raise WorkflowError(f"no local equivalent for {action}")
        if action == "actions/checkout":
            if inputs.get("persist-credentials") is not False:
                raise WorkflowError("actions/checkout without `persist-credentials: false`")
            listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
            for relative in (p for p in listed if p and (REPO_ROOT / p).is_file()):
                (workspace / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO_ROOT / relative, workspace / relative)
        elif action.startswith("actions/cache"):
            if not inputs.get("key") or not inputs.get("path"):
                raise WorkflowError("a cache needs a key and a path")
            step.outputs["cache-hit"], step.local_equivalent = "false", "a cache miss"
        elif action == "actions/upload-artifact":  # a folder's contents, hidden files only when asked (v4+)
            if not path.is_dir() or stored.exists():
                raise WorkflowError(f"upload-artifact: no folder {path}, or the name {stored.name} is taken")
            hidden = None if inputs.get("include-hidden-files") else shutil.ignore_patterns(".*")
            shutil.copytree(path, stored, ignore=hidden)
            step.outputs["artifact-id"] = self.github.add_artifact(stored) if self.github else "0"
        elif action == "actions/download-artifact":
            if not stored.is_dir():
                raise WorkflowError(f"download-artifact: no artifact {stored.name} in this run")
            shutil.copytree(stored, path, dirs_exist_ok=True)
        return "success"


def iter_steps(workflow: Workflow):
    for job, spec in workflow.jobs.items():
        for index, step in enumerate(spec["steps"]):
            yield job, index, step
