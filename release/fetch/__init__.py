"""fetch: a checkpoint URI (path, file://, http(s)://, hf://, s3://, gs://) -> a local file, sha256-pinned.

``fetch_artifact`` is the API; ``parse_hf_uri`` reads the ``hf://`` form. Everything else is internal.
"""

from release.fetch.artifact import FetchResult, HfLocation, default_cache_dir, fetch_artifact, parse_hf_uri

__all__ = ["FetchResult", "HfLocation", "default_cache_dir", "fetch_artifact", "parse_hf_uri"]
