"""The manifest codec every artifact shares (kind, format version, producer, parent hash) and hashing."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ditq import __version__
from ditq.errors import DitqError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_json(path: Path, body: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_manifest(root: Path, kind: str, body: dict[str, Any], *, parent_sha256: str | None = None) -> None:
    """Write ``manifest.json``: kind, format, producer, command, parent hash, then the kind's own fields."""
    head = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "ditq_version": __version__,
        "command": " ".join(["ditq", *sys.argv[1:]]) if Path(sys.argv[0]).name == "ditq" else None,
        "parent_sha256": parent_sha256,
    }
    write_json(root / MANIFEST, {**head, **body})


def read_manifest(root: Path, kind: str) -> dict[str, Any]:
    """Read and check ``manifest.json`` of an artifact directory; one-line DitqError on any mismatch."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DitqError(f"{root} is not a directory; pass a {kind} directory written by ditq")
    if not path.is_file():
        raise DitqError(f"{root} has no {MANIFEST}; it is not a {kind} artifact written by ditq")
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DitqError(f"{path} is not valid JSON ({err.__class__.__name__}); re-create the artifact") from err
    if not isinstance(body, dict) or body.get("kind") != kind:
        found = body.get("kind") if isinstance(body, dict) else type(body).__name__
        raise DitqError(f"{root} holds a '{found}' artifact, expected '{kind}'")
    if body.get("format_version") != FORMAT_VERSION:
        raise DitqError(
            f"{path} has format_version {body.get('format_version')!r}, this ditq reads {FORMAT_VERSION}; "
            "re-create the artifact with this version"
        )
    return body


def manifest_sha256(root: Path) -> str:
    return sha256_file(Path(root) / MANIFEST)


def manifest_kind(root: Path) -> str | None:
    """The ``kind`` a directory's manifest names, or None (no manifest, unreadable, not ditq's)."""
    try:
        body = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    kind = body.get("kind") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else None

