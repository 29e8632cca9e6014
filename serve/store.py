"""Where the online API keeps avatars: ``ROOT/avatars/<id>/`` holds the export files and
``status.json`` (through the same fsspec storage layer as the batch job, so a replica restart
loses nothing that finished)."""

from __future__ import annotations

import json
import re
import time

from avatar_ops.io import storage

ID_PATTERN = re.compile(r"^[0-9a-f]{20}$")
FINAL = ("ok", "rejected", "failed")
CONTENT_TYPES = {
    ".png": "image/png", ".gif": "image/gif", ".json": "application/json", ".ply": "application/octet-stream",
    ".safetensors": "application/octet-stream", ".mp4": "video/mp4",
}  # fmt: skip


def valid_id(avatar_id: str) -> bool:
    """Ids are content hashes: 20 lowercase hex digits, so never a path."""
    return bool(ID_PATTERN.fullmatch(avatar_id))


class AvatarStore:
    def __init__(self, root: str) -> None:
        self.root = root

    def folder(self, avatar_id: str) -> str:
        if not valid_id(avatar_id):
            raise ValueError(f"`avatar_id` must be 20 lowercase hex digits, got {avatar_id!r}.")
        return storage.join(self.root, "avatars", avatar_id)

    def file_uri(self, avatar_id: str, name: str) -> str:
        return storage.join(self.folder(avatar_id), name)

    def read_status(self, avatar_id: str) -> dict | None:
        uri = self.file_uri(avatar_id, "status.json")
        try:
            return json.loads(storage.read_bytes(uri))
        except FileNotFoundError:
            return None

    def write_status(self, status: dict) -> dict:
        status = {**status, "updated_at": time.time()}
        storage.write_bytes(self.file_uri(status["id"], "status.json"), json.dumps(status, default=float).encode())
        return status

    def iter_file(self, avatar_id: str, name: str, chunk: int = 1 << 20):
        """The bytes of one stored file, in chunks (for streaming responses)."""
        fs, path = storage.filesystem(self.file_uri(avatar_id, name))
        with fs.open(path, "rb") as handle:
            while block := handle.read(chunk):
                yield block
