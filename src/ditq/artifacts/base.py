"""The manifest codec every artifact shares (kind, format version, producer, parent hash) and hashing."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

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


def cli_command() -> str | None:
    """The ``ditq`` command line this process runs (``ditq ...``, ``python -m ditq ...`` or ``python -m
    ditq.cli.main ...``, written as ``ditq ...``), or None when ditq is used from Python."""
    parts = Path(sys.argv[0]).parts
    if parts[-1:] == ("ditq",) or parts[-2:] == ("ditq", "__main__.py") or parts[-3:] == ("ditq", "cli", "main.py"):
        return shlex.join(["ditq", *sys.argv[1:]])
    return None


def write_manifest(root: Path, kind: str, body: dict[str, Any], *, parent_sha256: str | None = None) -> None:
    """Write ``manifest.json``: kind, format, producer, command, parent hash, then the kind's own fields."""
    head = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "ditq_version": __version__,
        "command": cli_command(),
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



A = TypeVar("A", bound="Artifact")


class Artifact:
    """A typed artifact directory: one ``manifest.json`` (kind, format version, producer, parent hash) and the
    kind's own fields. Subclasses (frozen dataclasses with a ``root`` field) give ``KIND``, ``body()`` and
    ``from_body()``; saving, reading, file verification and the parent check are the same for every kind.
    """

    KIND: ClassVar[str] = ""
    REDO: ClassVar[str] = "re-create it with ditq"  # how to make a fresh one, for error messages
    root: Path

    @property
    def parent_hash(self) -> str | None:
        """The sha256 of the parent artifact's manifest, or None (no parent, or not recorded)."""
        return getattr(self, "parent_sha256", None)

    def body(self) -> dict[str, Any]:
        """The kind's own manifest fields."""
        raise NotImplementedError

    @classmethod
    def from_body(cls: type[A], root: Path, body: dict[str, Any]) -> A:
        """The artifact from its manifest fields (KeyError/TypeError/ValueError on a malformed manifest)."""
        raise NotImplementedError

    def save(self) -> None:
        """Write ``manifest.json`` (atomically) from ``body()``."""
        write_manifest(self.root, self.KIND, self.body(), parent_sha256=self.parent_hash)

    @classmethod
    def read(cls: type[A], root: Path) -> A:
        """Read and check the manifest; a one-line DitqError for a wrong kind, version or a malformed field."""
        root = Path(root)
        body = read_manifest(root, cls.KIND)
        try:
            return cls.from_body(root, body)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise DitqError(f"{root}/{MANIFEST} is malformed (bad or missing field {err}); {cls.REDO}") from err

    def verify_files(self, files: Iterable[tuple[str, str]], redo: str | None = None) -> None:
        """Every ``(name, sha256)`` must exist under ``root`` and match; one-line DitqError otherwise."""
        redo = redo or self.REDO
        for name, digest in files:
            path = self.root / name
            if not path.is_file():
                raise DitqError(f"{path} is missing; the {self.KIND} artifact does not match its manifest, {redo}")
            if sha256_file(path) != digest:
                raise DitqError(f"{path} does not match the sha256 in its manifest; {redo}")

    def live_parent(self, parent: Path | None, changed: str) -> Path | None:
        """``parent`` when it is present with the recorded hash; None when it is gone or no hash was recorded (an
        artifact whose parent was moved or deleted stands alone); DitqError(``changed``) when it has changed."""
        if parent is None or self.parent_hash is None or not (Path(parent) / MANIFEST).is_file():
            return None
        if manifest_sha256(parent) != self.parent_hash:
            raise DitqError(changed)
        return Path(parent)
