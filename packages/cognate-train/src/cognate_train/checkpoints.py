"""Atomic, checksummed, resumable checkpoints.

Layout of an output directory::

    checkpoints/step-000100/   one training checkpoint (kept: the last ``keep_last``)
    best/                      the checkpoint with the lowest validation loss so far
    final/                     the weights at the end of the run

Every checkpoint directory is a ``save_pretrained`` directory (``config.json``,
``model.safetensors``, the tokenizer files) plus the training state: ``state.pt`` (optimizer,
scheduler and torch RNG states; tensors and plain containers only, so it loads with
``torch.load(weights_only=True)``), ``trainer_state.json`` (step, data position, detector,
python RNG, counters, config) and ``manifest.json`` (sha256 and size of every file, the step and
a fingerprint of the run's compatibility-relevant settings).

Atomicity: a checkpoint is written into a ``.tmp-*`` directory, its files fsynced, the manifest
written last, and the directory renamed into place. A kill at any moment leaves either the old
state or the new one, plus perhaps a ``.tmp-*`` leftover that is never mistaken for a checkpoint
(it has no final name) and is removed on the next start. A checkpoint whose files do not match
its manifest is reported by name and skipped, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d{6,})$")


class CheckpointError(RuntimeError):
    """A damaged, missing or incompatible checkpoint; the message names it."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
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
    _fsync_dir(directory)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} is damaged: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
        manifest["files"], manifest["step"]  # noqa: B018 - presence check
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(
            f"checkpoint {directory} is damaged: {MANIFEST} is unreadable"
        ) from None
    return manifest


def verify(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest or raise naming the file."""
    manifest = read_manifest(directory)
    for rel, meta in manifest["files"].items():
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


class CheckpointManager:
    """Writes, rotates, lists and verifies the checkpoints of one output directory."""

    def __init__(self, root: str | Path, keep_last: int, fingerprint: dict[str, Any]) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.dir = self.root / "checkpoints"
        self.keep_last = keep_last
        self.fingerprint = fingerprint

    # -- discovery ---------------------------------------------------------------------------

    def step_dirs(self) -> list[tuple[int, Path]]:
        """All ``step-NNNNNN`` directories, oldest first (intact or not)."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in self.dir.iterdir():
            m = _STEP_RE.match(path.name)
            if m and path.is_dir():
                out.append((int(m.group(1)), path))
        return sorted(out)

    def latest_intact(self, warn: Callable[[str], None]) -> Path | None:
        """The newest checkpoint whose files match its manifest.

        Damaged ones are reported through ``warn`` by name and left in place. Raises
        :class:`CheckpointError` when checkpoints exist but none is intact.
        """
        dirs = self.step_dirs()
        damaged = []
        for _, path in reversed(dirs):
            try:
                verify(path)
            except CheckpointError as exc:
                warn(f"{exc}; skipping it")
                damaged.append(path.name)
                continue
            return path
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint in {self.dir} (damaged: {', '.join(damaged)}); "
                "use --resume never with a new --output-dir"
            )
        return None

    def check_compatible(self, path: Path) -> None:
        """Refuse to resume from a checkpoint written by a run with other settings."""
        manifest = read_manifest(path)
        diff = fingerprint_mismatch(manifest.get("fingerprint", {}), self.fingerprint)
        if diff is not None:
            raise CheckpointError(
                f"output dir {self.root} holds checkpoints of an incompatible run ({diff}); "
                "choose another --output-dir"
            )

    def any_checkpoint(self) -> Path | None:
        dirs = self.step_dirs()
        return dirs[-1][1] if dirs else None

    # -- writing -----------------------------------------------------------------------------

    def cleanup_partial(self) -> None:
        """Remove ``.tmp-*`` leftovers of a killed save; restore a ``.old-*`` whose swap broke."""
        for parent in (self.root, self.dir):
            if not parent.is_dir():
                continue
            for path in parent.iterdir():
                if path.name.startswith(".tmp-") and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.name.startswith(".old-") and path.is_dir():
                    name = path.name[len(".old-") :].rsplit("-", 1)[0]
                    target = parent / name
                    if target.exists():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.replace(path, target)

    def _write_atomic(self, target: Path, step: int, writer: Callable[[Path], None]) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        writer(tmp)
        write_manifest(tmp, step, self.fingerprint)
        if target.exists():
            if _STEP_RE.match(target.name):
                # a step directory of the same name: an old damaged one (resumed from an
                # earlier checkpoint) or the same step re-saved. Keep it under another name
                # rather than delete anything that might be good.
                try:
                    verify(target)
                    old = target.parent / f".old-{target.name}-{os.getpid()}"
                except CheckpointError:
                    old = target.parent / f"{target.name}.damaged-{int(time.time())}"
            else:
                old = target.parent / f".old-{target.name}-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            if old.name.startswith(".old-"):
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
        return target

    def save(self, step: int, writer: Callable[[Path], None]) -> Path:
        """Write ``checkpoints/step-NNNNNN`` atomically, then drop all but the last K."""
        path = self._write_atomic(self.dir / f"step-{step:06d}", step, writer)
        self.rotate()
        return path

    def save_named(self, name: str, step: int, writer: Callable[[Path], None]) -> Path:
        """Write ``best/`` or ``final/`` atomically (replacing the previous one)."""
        return self._write_atomic(self.root / name, step, writer)

    def rotate(self) -> None:
        """Keep the newest ``keep_last`` intact step checkpoints; damaged ones are left alone."""
        intact = []
        for step, path in self.step_dirs():
            try:
                read_manifest(path)
            except CheckpointError:
                continue
            intact.append((step, path))
        for _, path in intact[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# what goes into a checkpoint


def save_weights(model: torch.nn.Module, directory: Path) -> None:
    """Weights as safetensors: ``save_pretrained`` for Hugging Face models, else
    ``safetensors.torch.save_model`` (which also handles tied tensors)."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory, safe_serialization=True)
    else:
        from safetensors.torch import save_model

        save_model(model, str(directory / "model.safetensors"))


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load ``model.safetensors`` into ``model`` strictly, allowing only tied duplicates to be
    absent from the file (save_pretrained stores a tied tensor once)."""
    from safetensors.torch import load_file

    path = directory / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no model.safetensors")
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers(remove_duplicate=False)))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    really_missing = [
        k for k in missing if k not in params or params[k].data_ptr() not in loaded_ptrs
    ]
    if really_missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not match the model "
            f"(missing {really_missing[:3]}, unexpected {list(unexpected)[:3]})"
        )


def save_torch_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / "state.pt")


def load_torch_state(directory: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code."""
    return torch.load(directory / "state.pt", map_location="cpu", weights_only=True)


def save_json(path: Path, obj: Any) -> None:
    with path.open("w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
