"""fetch: a checkpoint URI (path, file://, http(s)://, hf://, s3://, gs://) -> a local file, sha256-pinned.

Imports point one way: ``weights_only`` -> ``artifact`` -> ``source``.

- ``source``: a URI opened as a stream of chunks (``open_source``), with the one HTTP retry/resume loop.
- ``weights_only``: ``fetch_weights_only`` is the pipeline's fetch step (result: ``Fetched``): it streams the
  checkpoint once, hashes every byte, and keeps only the model's records and small metadata in
  ``<cache>/weights-only/<sha256>.pt`` (the optimizer state never lands on disk); ``peek_checkpoint`` reads a
  checkpoint's head for the preflight.
- ``artifact``: ``fetch_artifact`` fetches a whole file (``release fetch``, and the fallback for
  non-streamable formats; result: ``Downloaded``).
"""

from release.fetch.artifact import Downloaded, fetch_artifact
from release.fetch.source import HfLocation, default_cache_dir, parse_hf_uri
from release.fetch.weights_only import (
    CheckpointHead,
    Fetched,
    fetch_weights_only,
    peek_checkpoint,
    weights_only_path,
)

__all__ = [
    "CheckpointHead",
    "Downloaded",
    "Fetched",
    "HfLocation",
    "default_cache_dir",
    "fetch_artifact",
    "fetch_weights_only",
    "parse_hf_uri",
    "peek_checkpoint",
    "weights_only_path",
]
