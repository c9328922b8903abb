"""publish: a verified folder -> a staged Hub commit, checked from the Hub, landed on its branch, tagged.

- ``publisher``: ``publish_release`` (the protocol) and ``PublishResult``.
- ``plan``: what a release uploads and how it differs from a Hub revision (pure, no network).
- ``retry``: the back-off policy for transient Hub failures.
"""

from release.publish.publisher import PublishResult, publish_release

__all__ = ["PublishResult", "publish_release"]
