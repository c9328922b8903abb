"""publish: a verified folder -> a staged Hub commit, checked from the Hub, landed on its branch, tagged.

- ``publisher``: ``publish_release`` (the protocol), ``PublishResult`` (with ``CleanupPending`` warnings),
  ``target_branch`` (main, an older line's ``release/vX.Y``, or a prerelease's own branch) and
  ``download_commit`` (a Hub commit, under the retry policy).
- ``plan``: what a release uploads and how it differs from a Hub revision (pure, no network).
- ``retry``: the back-off policy for transient Hub failures (HTTP and the transfer layer alike), honouring
  the Hub's ``RateLimit`` / ``Retry-After`` within one budget of waiting per run.
"""

from release.publish.publisher import (
    CleanupPending,
    PublishResult,
    download_commit,
    publish_release,
    target_branch,
)

__all__ = ["CleanupPending", "PublishResult", "download_commit", "publish_release", "target_branch"]
