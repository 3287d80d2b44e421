"""Checkpoint manifests: the sha256 and size of every file a checkpoint holds.

``manifest.json`` is written last, after every other file is fsynced; it lists each file with
its checksum and size, the step, and a fingerprint of the run's compatibility-relevant settings.
:func:`verify` re-reads every file against it, so a damaged, truncated, missing or swapped-in
file is named before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A damaged, missing or incompatible checkpoint; the message names it."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(directory: Path, step: int, fingerprint: dict[str, Any]) -> None:
    """Checksum every file in ``directory`` (fsyncing it) and write the manifest last."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"format": FORMAT_VERSION, "step": step, "fingerprint": fingerprint, "files": files}
    tmp = directory / (MANIFEST + ".tmp")
    with tmp.open("w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / MANIFEST)
    fsync_dir(directory)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} is damaged: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
        ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
        ok = ok and isinstance(manifest.get("step"), int)
        ok = ok and isinstance(manifest.get("fingerprint", {}), dict)
        ok = ok and all(
            isinstance(m, dict)
            and isinstance(m.get("sha256"), str)
            and isinstance(m.get("bytes"), int)
            for m in manifest["files"].values()
        )
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        ok = False
    if not ok:
        raise CheckpointError(f"checkpoint {directory} is damaged: {MANIFEST} is unreadable")
    return manifest


def verify(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest or raise naming the file.

    The manifest must list the weights and every file the directory holds, so a file swapped
    in, or a manifest emptied of its list, is caught as surely as changed bytes."""
    manifest = read_manifest(directory)
    listed = manifest["files"]
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    unlisted = sorted(present - set(listed) - {MANIFEST})
    if unlisted:
        raise CheckpointError(
            f"checkpoint {directory} is damaged: {unlisted[0]} is not in the {MANIFEST}"
        )
    if "model.safetensors" not in listed:
        raise CheckpointError(
            f"checkpoint {directory} is damaged: {MANIFEST} does not list model.safetensors"
        )
    for rel, meta in listed.items():
        path = directory / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is damaged: {rel} is missing")
        if path.stat().st_size != meta["bytes"]:
            raise CheckpointError(
                f"checkpoint {directory} is damaged: {rel} has {path.stat().st_size} bytes, "
                f"the manifest says {meta['bytes']}"
            )
        if sha256_file(path) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {directory} is damaged: {rel} checksum mismatch")
    return manifest


def fingerprint_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Describe the first setting that differs between two fingerprints, or None."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            return f"{key} {saved.get(key)!r} != {current.get(key)!r}"
    return None
