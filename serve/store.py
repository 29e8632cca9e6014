"""Where the online API keeps avatars: ``ROOT/tenants/<tenant>/avatars/<id>/`` holds the export
files, ``status.json`` and the job's leases (through the same fsspec storage layer as the batch
job, so a replica restart loses nothing that finished).

Tenants: every API key is a tenant (:func:`tenant_id`), so one client can neither read nor
detect another's avatars; within a tenant, ids are content hashes, so posting a photo twice is
idempotent.

Leases: the replica that runs attempt ``n`` of a job is the one that created ``lease-<n>.json``
(an exclusive create: ``O_EXCL`` on a local disk, ``If-None-Match: *`` on S3), so two ingress
replicas never run one attempt. A later attempt (after the job stopped heartbeating) creates
``lease-<n+1>.json``; the replica still holding ``n`` sees that and stops writing.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import time

from avatar_ops.io import storage

ID_PATTERN = re.compile(r"^[0-9a-f]{20}$")
TENANT_PATTERN = re.compile(r"^[0-9a-z][0-9a-z_-]{0,63}$")
#: The one tenant of an API with ``auth: disabled``.
ANONYMOUS = "anonymous"
FINAL = ("ok", "rejected", "failed")
CONTENT_TYPES = {
    ".png": "image/png", ".gif": "image/gif", ".json": "application/json", ".ply": "application/octet-stream",
    ".safetensors": "application/octet-stream", ".mp4": "video/mp4", ".glb": "model/gltf-binary",
    ".splat": "application/octet-stream", ".html": "text/html; charset=utf-8",
}  # fmt: skip
#: Headers of a viewer page: it runs its own inline script (three.js, the splat renderer's
#: WebAssembly and its workers from blob: URLs) on data embedded in it, and may load nothing
#: else: no network, no other origin, not framed by another site.
VIEWER_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline' 'wasm-unsafe-eval' blob:; worker-src blob:; "
        "connect-src data: blob:; img-src data: blob:; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def valid_id(avatar_id: str) -> bool:
    """Ids are content hashes: 20 lowercase hex digits, so never a path."""
    return bool(ID_PATTERN.fullmatch(avatar_id))


def tenant_id(api_key: str) -> str:
    """The tenant of an API key: 16 hex digits of its SHA-256 (the key itself never reaches a
    storage path or a log). A new key is a new tenant."""
    if not api_key:
        raise ValueError("`api_key` must be a non-empty string, got ''.")
    return hashlib.sha256(b"avatar-forge tenant\0" + api_key.encode()).hexdigest()[:16]


class AvatarStore:
    def __init__(self, root: str) -> None:
        self.root = root

    def folder(self, tenant: str, avatar_id: str) -> str:
        if not TENANT_PATTERN.fullmatch(tenant):
            raise ValueError(f"`tenant` must match {TENANT_PATTERN.pattern}, got {tenant!r}.")
        if not valid_id(avatar_id):
            raise ValueError(f"`avatar_id` must be 20 lowercase hex digits, got {avatar_id!r}.")
        return storage.join(self.root, "tenants", tenant, "avatars", avatar_id)

    def file_uri(self, tenant: str, avatar_id: str, name: str) -> str:
        return storage.join(self.folder(tenant, avatar_id), name)

    def read_status(self, tenant: str, avatar_id: str) -> dict | None:
        uri = self.file_uri(tenant, avatar_id, "status.json")
        try:
            return json.loads(storage.read_bytes(uri))
        except FileNotFoundError:
            return None

    def write_status(self, tenant: str, status: dict) -> dict:
        """Write ``status`` (atomically) with ``updated_at`` set to now; returns what was written."""
        status = {**status, "updated_at": time.time()}
        storage.write_bytes(self.file_uri(tenant, status["id"], "status.json"), json.dumps(status, default=float).encode())
        return status

    def take_lease(self, tenant: str, avatar_id: str, attempt: int, owner: str) -> bool:
        """Create ``lease-<attempt>.json`` if nobody has: True for the one caller that did."""
        if attempt < 1:
            raise ValueError(f"`attempt` must be at least 1, got {attempt}.")
        uri = self.file_uri(tenant, avatar_id, f"lease-{attempt}.json")
        fs, path = storage.filesystem(uri)
        if storage.is_local(uri):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        try:
            with fs.open(path, "xb") as handle:
                handle.write(json.dumps({"owner": owner, "attempt": attempt, "taken_at": time.time()}).encode())
        except FileExistsError:
            return False
        return True

    def lease_superseded(self, tenant: str, avatar_id: str, attempt: int) -> bool:
        """Whether a later attempt than ``attempt`` has taken the job over."""
        return storage.exists(self.file_uri(tenant, avatar_id, f"lease-{attempt + 1}.json"))

    def iter_file(self, tenant: str, avatar_id: str, name: str, chunk: int = 1 << 20):
        """The bytes of one stored file, in chunks (for streaming responses)."""
        fs, path = storage.filesystem(self.file_uri(tenant, avatar_id, name))
        with fs.open(path, "rb") as handle:
            while block := handle.read(chunk):
                yield block
