"""Loading a candidate exactly as users load it, with remote code that cannot come from a stale cache.

Users run ``AutoModelForCausalLM.from_pretrained(path_or_id, trust_remote_code=True)``. transformers then
copies the folder's ``*.py`` files into ``HF_MODULES_CACHE`` and imports them as
``transformers_modules.<...>``; both the copy on disk and the module in ``sys.modules`` outlive the call. A
verification must never pass because an old, correct copy answered instead of the shipped file, so every load
here happens inside ``fresh_remote_code_modules``.

Why in-process and not a subprocess with its own ``HF_MODULES_CACHE``: a child interpreter is the most
obviously isolated, but on the CPU runners this targets importing torch + transformers takes ~10 s and ~330 MB
of RSS, as much memory as the ~85M-parameter benchmark model's weights; the memory gate (peak <= baseline +
1.3x weights) could not hold with a second interpreter alive next to the parent. In-process isolation is three
pieces of state, all restored afterwards: the modules-cache path (read once at import into
``transformers.dynamic_module_utils`` and ``transformers.utils.hub``; both are repointed to a new temporary
folder), ``sys.modules`` (every ``transformers_modules*`` entry is taken out before and after, so the import
system cannot find an old module object or an old package ``__path__``), and ``sys.path`` / the import caches.
tests/test_verify.py shows a stale module masking a broken file in a plain load, and verification failing.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from release._io import attrs_dict, first_line
from release.auth import read_token
from release.errors import UsageError, VerificationError

log = logging.getLogger(__name__)

_DYNAMIC_PACKAGE = "transformers_modules"


def _take_dynamic_modules() -> dict[str, Any]:
    taken = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == _DYNAMIC_PACKAGE or name.startswith(_DYNAMIC_PACKAGE + ".")
    }
    importlib.invalidate_caches()
    return taken


@contextlib.contextmanager
def fresh_remote_code_modules() -> Iterator[Path]:
    """Within this block, remote code is copied to and imported from a new, empty modules cache (yielded);
    everything is put back on exit, so the caller's process is left as it was found."""
    import transformers.dynamic_module_utils as dynamic_module_utils
    import transformers.utils.hub as hub_utils

    saved_modules = _take_dynamic_modules()
    saved_path = list(sys.path)
    saved_cache = (dynamic_module_utils.HF_MODULES_CACHE, hub_utils.HF_MODULES_CACHE)
    saved_env = os.environ.get("HF_MODULES_CACHE")
    with tempfile.TemporaryDirectory(prefix="release-verify-modules-") as tmp:
        dynamic_module_utils.HF_MODULES_CACHE = hub_utils.HF_MODULES_CACHE = tmp
        os.environ["HF_MODULES_CACHE"] = tmp  # read by any module that looks it up late
        # An earlier load left its modules cache on sys.path; `import transformers_modules` would find that
        # old package first (transformers appends the new cache after it), so take those entries out too.
        sys.path[:] = [p for p in sys.path if not (Path(p or ".") / _DYNAMIC_PACKAGE).is_dir()]
        try:
            yield Path(tmp)
        finally:
            _take_dynamic_modules()
            sys.modules.update(saved_modules)
            sys.path[:] = saved_path
            dynamic_module_utils.HF_MODULES_CACHE, hub_utils.HF_MODULES_CACHE = saved_cache
            if saved_env is None:
                os.environ.pop("HF_MODULES_CACHE", None)
            else:
                os.environ["HF_MODULES_CACHE"] = saved_env
            importlib.invalidate_caches()


@dataclass
class CandidateSource:
    """Where the candidate comes from and the local folder holding exactly its files."""

    kind: str  # "folder" | "hub"
    folder: Path  # the files that are loaded (for the Hub: the downloaded snapshot)
    load_id: str  # what is passed to from_pretrained: the folder path, or the repo id
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    cache_dir: Path | None = None  # the fresh Hub cache a Hub candidate was downloaded into

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": True}
        if self.kind == "hub":
            kwargs.update(revision=self.commit or self.revision, token=read_token())
            if self.cache_dir is not None:
                kwargs["cache_dir"] = str(self.cache_dir)
        return kwargs

    def describe(self) -> dict[str, Any]:
        if self.kind == "hub":
            return {"source": "hub", **attrs_dict(self, "repo_id", "revision", "commit")}
        return {"source": "folder", "path": str(self.folder)}


def is_repo_id(model: str | Path) -> bool:
    """Not a path here, and a Hub repo id by huggingface_hub's own rule."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(str(model))
    except HFValidationError:
        return False
    return not Path(model).exists()


@contextlib.contextmanager
def candidate_source(model: str | Path, revision: str | None) -> Iterator[CandidateSource]:
    """A folder as it is, or a Hub revision downloaded into a fresh temporary cache (removed afterwards).

    Raises:
        UsageError: ``model`` is neither an existing folder nor a repo id; a revision was given for a folder.
        VerificationError: The Hub revision cannot be downloaded.
    """
    path = Path(model)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{path} is not a model folder")
        if revision is not None:
            raise UsageError("--revision applies to a Hub repo id, not to a local folder")
        if not (path / "config.json").is_file():
            raise UsageError(f"{path} has no config.json; is it a converted model folder?")
        resolved = path.resolve()
        yield CandidateSource(kind="folder", folder=resolved, load_id=str(resolved))
        return
    if not is_repo_id(model):
        raise UsageError(f"{model} is neither a model folder nor a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    with tempfile.TemporaryDirectory(prefix="release-verify-hub-") as tmp:
        try:
            snapshot = Path(
                snapshot_download(str(model), revision=revision, cache_dir=tmp, token=read_token())
            )
        except (RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
            where = f"{model}@{revision}" if revision else str(model)
            raise VerificationError(f"cannot download {where} from the Hub: {first_line(exc)}") from exc
        yield CandidateSource(
            kind="hub",
            folder=snapshot,
            load_id=str(model),
            repo_id=str(model),
            revision=revision,
            commit=snapshot.name,  # snapshots/<commit sha>/
            cache_dir=Path(tmp),
        )


def load_candidate(source: CandidateSource, device: Device | None = None):
    """``AutoModelForCausalLM`` and ``AutoTokenizer`` with ``trust_remote_code=True``, nothing else changed
    but where the weights go (``device``; default the CPU, as a plain ``from_pretrained``).

    Call inside ``fresh_remote_code_modules``. Progress bars are off while loading (CI logs stay readable).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs = source.from_pretrained_kwargs()
    model_kwargs = device.from_pretrained_kwargs() if device is not None else {}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(source.load_id, **kwargs, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source.load_id, **kwargs)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- devices

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
# What one model needs on its device, over its float32 weights: activations within the logits budget (1/16 of
# the weights) and CUDA's own context and allocator slack.
DEVICE_MEMORY_SHARE = 1.2
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


@dataclass(frozen=True)
class Device:
    """Where verify runs both models: one torch device, or accelerate's placement over several.

    ``spread``: the model does not fit ``name``'s free memory, so accelerate places its layers over the
    devices ``max_memory`` allows (the GPUs, then the CPU): ``device_map="auto"`` for the candidate, and
    ``infer_auto_device_map`` + ``dispatch_model`` for the training module.
    """

    name: str = "cpu"  # "cpu" or "cuda:N"
    spread: bool = False
    max_memory: dict[int | str, int] | None = None  # with ``spread``: bytes per GPU index, and "cpu"

    def describe(self) -> str:
        return f"{self.name.split(':')[0]} (device_map=auto)" if self.spread else self.name

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        if self.name == "cpu":
            return {}
        if self.spread:
            return {"device_map": "auto", "max_memory": self.max_memory}
        return {"device_map": self.name}

    def place(self, module):
        """Move the training module (built on the CPU, with ``blocks``) here; returns the placed module."""
        if self.name == "cpu":
            return module
        if not self.spread:
            return module.to(self.name)
        from accelerate import dispatch_model, infer_auto_device_map

        # A block's attention and feed-forward stay together: accelerate splits the model between blocks only.
        device_map = infer_auto_device_map(
            module, max_memory=self.max_memory, no_split_module_classes=[type(module.blocks[0]).__name__]
        )
        return dispatch_model(module, device_map=device_map)


def cuda_memory() -> list[tuple[int, int]]:
    """``(free, total)`` bytes of each visible CUDA device; empty without one. The only place verify asks a
    GPU anything, so that ``resolve_device`` runs on any machine with another ``gpus``."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(i) for i in range(torch.cuda.device_count())]


def resolve_device(
    spec: str, *, weights_bytes: int, gpus: Callable[[], list[tuple[int, int]]] = cuda_memory
) -> Device:
    """The ``Device`` for ``--device`` ``spec``: ``auto`` (the first GPU if there is one, else the CPU), ``cpu``,
    ``cuda`` (the first GPU) or ``cuda:N``.

    A model whose float32 weights (``weights_bytes``, times ``DEVICE_MEMORY_SHARE``) do not fit the chosen GPU's
    free memory is spread: over every GPU for ``auto`` and ``cuda``, over GPU N for ``cuda:N``, and the CPU
    after them.

    Raises:
        UsageError: An unknown spec, ``cuda`` without a visible GPU, ``cuda:N`` beyond the GPUs there are, or a
            GPU without ``accelerate`` installed.
    """
    text = str(spec).strip().lower()
    if text == "cpu":
        return Device()
    match = _CUDA.match(text)
    if text != "auto" and match is None:
        raise UsageError(f"unknown device {spec!r}; use one of {', '.join(DEVICE_CHOICES)}")
    memory = gpus()
    if not memory:
        if text == "auto":
            return Device()
        raise UsageError(f"device {spec!r}: no CUDA device is visible here; use --device cpu or auto")
    index = int(match.group(1)) if match and match.group(1) is not None else 0
    if index >= len(memory):
        raise UsageError(
            f"device {spec!r}: there are {len(memory)} CUDA devices (cuda:0 to cuda:{len(memory) - 1})"
        )
    try:
        import accelerate  # noqa: F401  (transformers' device_map and the training module's dispatch)
    except ImportError:
        raise UsageError(
            f"device {spec!r} needs accelerate to place the models: pip install accelerate"
        ) from None
    needs = int(DEVICE_MEMORY_SHARE * weights_bytes)
    if needs <= memory[index][0]:
        return Device(f"cuda:{index}")
    gpus_used = range(len(memory)) if match is None or match.group(1) is None else [index]
    budget: dict[int | str, int] = {i: int(memory[i][0] / DEVICE_MEMORY_SHARE) for i in gpus_used}
    budget["cpu"] = weights_bytes  # whatever the GPUs cannot hold
    return Device(f"cuda:{index}", spread=True, max_memory=budget)


def library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "huggingface_hub", "safetensors"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
