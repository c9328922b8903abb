"""A local Hugging Face Hub emulator for tests: the real `huggingface_hub` client talks to it over HTTP.

    with HubEmulator() as hub:        # or the `hub` fixture from tests/conftest_hub.py
        os.environ["HF_ENDPOINT"] = hub.url   # before importing huggingface_hub / transformers
        ...
        hub.repo_files("org/model", "v1.0.0")  # exact content of a revision

See `server.py` for the endpoints and `store.py` for the data model.
"""

from .server import ConcurrentPush, Fault, HubEmulator, RecordedRequest, Refs
from .store import LFS_SIZE_THRESHOLD, Commit, FileEntry

__all__ = [
    "LFS_SIZE_THRESHOLD",
    "Commit",
    "ConcurrentPush",
    "Fault",
    "FileEntry",
    "HubEmulator",
    "RecordedRequest",
    "Refs",
]
