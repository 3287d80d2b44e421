"""Atomic, checksummed, resumable checkpoints.

Layout of an output directory::

    checkpoints/step-000100/   one training checkpoint (kept: the last ``keep_last``)
    best/                      the checkpoint with the lowest validation loss so far
    final/                     the weights at the end of the run

Every checkpoint directory holds the task's weights (for the curriculum a ``save_pretrained``
directory with the tokenizer) plus the training state described in :mod:`cognate_train.state`,
and ``manifest.json`` (:mod:`cognate_train.manifest`: sha256 and size of every file, the step and
a fingerprint of the run's compatibility-relevant settings).

Atomicity: a checkpoint is written into a ``.tmp-*`` directory, its files fsynced, the manifest
written last, and the directory renamed into place. A kill at any moment leaves either the old
state or the new one, plus perhaps a ``.tmp-*`` leftover that is never mistaken for a checkpoint
(it has no final name) and is removed on the next start. A checkpoint whose files do not match
its manifest is reported by name and skipped, never deleted. A write that fails (a full or
read-only disk) removes its temporary directory and raises :class:`StorageError` naming the
checkpoint and the cause.

Resume (``never`` / ``auto`` / a PATH) is decided and checked in one place,
:func:`resolve_resume`.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, RunConfig, aliases, to_dict
from .manifest import (
    MANIFEST,
    CheckpointError,
    fingerprint_mismatch,
    fsync_dir,
    read_manifest,
    sha256_file,
    verify,
    write_manifest,
)

__all__ = ["MANIFEST", "CheckpointError", "CheckpointManager", "StorageError", "verify"]
__all__ += ["read_manifest", "resolve_resume", "sha256_file", "fingerprint_mismatch"]

_STEP_RE = re.compile(r"^step-(\d{6,})$")


class StorageError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, ...); names path and cause."""


def storage_failure(exc: BaseException) -> str | None:
    """``<cause> (<path>)`` when ``exc`` is a failed write (an OSError, or safetensors' Rust
    I/O error, which is not one), else None."""
    if isinstance(exc, OSError):
        cause = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
        return f"{cause} ({exc.filename})" if exc.filename else cause
    text = str(exc)
    for needle, errno_ in (("StorageFull", errno.ENOSPC), ("code: 28", errno.ENOSPC)):
        if needle in text:
            return os.strerror(errno_)
    for needle in ("ReadOnlyFilesystem", "code: 30"):
        if needle in text:
            return os.strerror(errno.EROFS)
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
        try:
            tmp.mkdir()
            writer(tmp)
            write_manifest(tmp, step, self.fingerprint)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            cause = storage_failure(exc)
            if cause is None:
                raise
            raise StorageError(f"cannot write checkpoint {target}: {cause}") from None
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
        fsync_dir(target.parent)
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
# resume: never / auto / PATH, checked in one place

# settings a resumed run may change freely: where and how it runs and reports, not what it learns
FREE_ON_RESUME = frozenset(
    {"preset", "output_dir", "resume", "override", "device", "threads", "log", "samples"}
    | {"specialization"}  # the checkpoint's own specialization is in its fingerprint
    | {"eval_batch_size", "keep_last", "checkpoint_every", "log_every", "max_nonfinite"}
    | {"cache_dir"}
)


def changed_settings(path: Path, cfg: RunConfig) -> dict[str, list[Any]]:
    """``{field: [checkpoint's value, this run's value]}`` for every setting that differs from
    the one the checkpoint was trained with (bookkeeping settings excepted)."""
    try:
        state = load_json(path / "trainer_state.json")
    except (ValueError, OSError):
        state = None
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} is damaged: trainer_state.json has no config")
    renamed = aliases(type(cfg))
    saved = {renamed.get(k, k): v for k, v in saved.items()}
    now = to_dict(cfg)
    changed = {
        k: [saved[k], v]
        for k, v in now.items()
        if k in saved and k not in FREE_ON_RESUME | {"grad_accum"} and saved[k] != v
    }
    # what must match is the global batch: grad_accum x world_size (a run of N processes
    # resumes in M processes with grad_accum scaled by N/M)
    from .distributed import world_size

    then = saved.get("grad_accum", now["grad_accum"]) * int(state.get("world_size", 1))
    if then != now["grad_accum"] * world_size():
        changed["grad_accum x world_size"] = [then, now["grad_accum"] * world_size()]
    return changed


def resolve_resume(
    manager: CheckpointManager, cfg: RunConfig, warn: Callable[[str], None]
) -> tuple[Path, dict[str, list[Any]]] | None:
    """The checkpoint ``cfg.resume`` names (``never``: none, and the directory must hold none;
    ``auto``: the newest intact one, or none; a PATH: that one), checked: intact, a step
    checkpoint, written by a compatible run, with the same hyperparameters unless
    ``cfg.override``. Returns (path, changed settings) or None for a fresh start."""
    if cfg.resume == "never":
        existing = manager.any_checkpoint()
        if existing is not None:
            raise ConfigError(
                f"resume: output dir {manager.root} already holds checkpoints ({existing.name}); "
                "use --resume auto to continue that run or choose another --output-dir"
            )
        return None
    if cfg.resume == "auto":
        path = manager.latest_intact(warn)
        if path is None:
            return None
    else:
        path = Path(cfg.resume)
        verify(path)
        if not (path / "state.pt").is_file():
            raise CheckpointError(
                f"resume: {path} holds weights only (best/ and final/ do); "
                "resume from a checkpoints/step-NNNNNN directory"
            )
    manager.check_compatible(path)
    changed = changed_settings(path, cfg)
    if changed and not cfg.override:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ConfigError(
            f"resume: settings differ from checkpoint {path} ({listed}); rerun with the "
            "checkpoint's values, or add --override to continue with the new ones"
        )
    return path, changed


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
    # serialised in memory first, so a full disk surfaces as the OSError of a plain write
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with (directory / "state.pt").open("wb") as fh:
        fh.write(buffer.getbuffer())


def load_torch_state(directory: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code."""
    return torch.load(directory / "state.pt", map_location="cpu", weights_only=True)


def save_json(path: Path, obj: Any) -> None:
    with path.open("w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
