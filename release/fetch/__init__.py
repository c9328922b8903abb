"""fetch: a checkpoint URI (path, file://, http(s)://, hf://, s3://, gs://) -> a local file, sha256-pinned.

``fetch_weights_only`` is what ``release run`` uses: it streams the checkpoint once, hashes every byte, and
keeps only the model's records and small metadata in ``<cache>/weights-only/<sha256>.pt`` (the optimizer
state never lands on disk); ``peek_checkpoint`` reads a checkpoint's head for the preflight.
``fetch_artifact`` fetches a whole file (``release fetch``, and the fallback for non-streamable formats);
``parse_hf_uri`` reads the ``hf://`` form. Everything else is internal.
"""

from release.fetch.artifact import FetchResult, HfLocation, default_cache_dir, fetch_artifact, parse_hf_uri
from release.fetch.weights_only import (
    CheckpointHead,
    WeightsOnlyResult,
    fetch_weights_only,
    peek_checkpoint,
    weights_only_path,
)

__all__ = [
    "CheckpointHead",
    "FetchResult",
    "HfLocation",
    "WeightsOnlyResult",
    "default_cache_dir",
    "fetch_artifact",
    "fetch_weights_only",
    "parse_hf_uri",
    "peek_checkpoint",
    "weights_only_path",
]
