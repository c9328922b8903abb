"""Remote-code hygiene of a model folder, checked statically (nothing is imported).

- ``config.json``'s ``auto_map`` must point at files shipped in the folder that define the named classes (not
  at code in another repo, ``other/repo--module.Class``, and not at a file that is missing);
- every ``*.py`` in the folder may import only torch, transformers, the standard library and its sibling files
  (relative imports). This repo's packages (``release``, ``modeling``, ``tests``) are called out by name: they
  exist on the machine that converted the model and nowhere else, so such a file passes here and breaks for
  users.

``without_repo.py`` is the same rule at run time: the compat matrix's and the card snippet's children run
through it, so an import of this repo fails there even where the repo is installed.
"""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from release.verify.without_repo import THIS_REPO_PACKAGES

ALLOWED_THIRD_PARTY = ("torch", "transformers")
_DYNAMIC_IMPORTS = ("__import__", "importlib.import_module")


@dataclass
class HygieneResult:
    auto_map: dict[str, Any] = field(default_factory=dict)
    python_files: list[str] = field(default_factory=list)
    imports: dict[str, list[str]] = field(default_factory=dict)  # file -> absolute imports' top packages
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": not self.problems}


def check_remote_code_hygiene(folder: Path) -> HygieneResult:
    """Check ``auto_map`` and the imports of every Python file under ``folder``; problems are listed."""
    folder = Path(folder)
    result = HygieneResult()
    trees: dict[str, ast.Module] = {}
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).as_posix()
        result.python_files.append(rel)
        try:
            trees[rel] = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        except (SyntaxError, UnicodeDecodeError) as exc:
            result.problems.append(f"{rel} cannot be parsed: {exc}")
    for rel, tree in trees.items():
        result.imports[rel], problems = _scan_imports(rel, tree, folder)
        result.problems += problems
    _check_auto_map(folder, trees, result)
    return result


def _check_auto_map(folder: Path, trees: dict[str, ast.Module], result: HygieneResult) -> None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        result.problems.append(f"config.json cannot be read: {exc}")
        return
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        result.problems.append("config.json has no auto_map: trust_remote_code would not find the model code")
        return
    result.auto_map = auto_map
    for auto_class in ("AutoConfig", "AutoModelForCausalLM"):
        if auto_class not in auto_map:
            result.problems.append(f"config.json auto_map has no {auto_class}")
    for auto_class, refs in sorted(auto_map.items()):
        for ref in refs if isinstance(refs, list) else [refs]:
            if ref is None:  # e.g. AutoTokenizer: [slow, fast] with one of them absent
                continue
            problem = _resolve_reference(str(ref), trees)
            if problem:
                result.problems.append(f"config.json auto_map {auto_class} -> {ref}: {problem}")


def _resolve_reference(ref: str, trees: dict[str, ast.Module]) -> str | None:
    if "--" in ref:
        return "points at code in another repo, not at a file shipped in this folder"
    module, _, class_name = ref.rpartition(".")
    if not module or not class_name:
        return "is not of the form module.ClassName"
    rel = module.replace(".", "/") + ".py"
    tree = trees.get(rel)
    if tree is None:
        return f"{rel} is not in the folder"
    defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    if class_name not in defined:
        return f"{rel} does not define class {class_name}"
    return None


def _scan_imports(rel: str, tree: ast.Module, folder: Path) -> tuple[list[str], list[str]]:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    found: set[str] = set()
    problems: list[str] = []
    here = (folder / rel).parent

    def check_absolute(module: str, lineno: int) -> None:
        top = module.split(".")[0]
        found.add(top)
        if top in THIS_REPO_PACKAGES:
            problems.append(
                f"{rel}:{lineno} imports {module}, a package of the release repo that users do not have"
            )
        elif top not in stdlib and top not in ALLOWED_THIRD_PARTY:
            problems.append(
                f"{rel}:{lineno} imports {module}; remote code may import only torch, transformers, the "
                "standard library and its sibling files"
            )

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_absolute(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                check_absolute(node.module or "", node.lineno)
                continue
            base = here
            for _ in range(node.level - 1):
                base = base.parent
            if node.module:
                target = base / node.module.replace(".", "/")
                if not Path(f"{target}.py").is_file() and not (target / "__init__.py").is_file():
                    problems.append(f"{rel}:{node.lineno} imports .{node.module}, which is not in the folder")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in _DYNAMIC_IMPORTS:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                check_absolute(first.value, node.lineno)
            else:
                problems.append(f"{rel}:{node.lineno} imports a module whose name is computed at run time")
    return sorted(found), problems
