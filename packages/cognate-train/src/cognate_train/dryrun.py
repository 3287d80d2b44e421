"""``cognate-train train --dry-run``: the time of a whole run, estimated before it is started.

For each model the run would train, the task, model and optimizer are built exactly as ``train``
builds them, in a temporary directory that is deleted afterwards (the output directory is never
touched, nothing is written there). One step runs untimed (first-call allocation), then
``steps`` steps are timed, and one evaluation is timed on the first ``probe`` validation prompts
per family. The estimate::

    training    = total_steps x median step time
    evaluations = (total_steps // eval_every + [total_steps % eval_every > 0])
                  x evaluation time per prompt x validation prompts

(the engine evaluates every ``eval_every`` steps and once more at the end). It is an
extrapolation from the first steps: on the curriculum, later stages have longer rows and the
ACT head may halt later or sooner, so the real time can differ by tens of percent. Peak memory
is CUDA's ``max_memory_allocated`` on a GPU, the process's peak resident set on a CPU.
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from .config import TrainConfig, specializations
from .progress import hms
from .runtime import cpu_threads, denormals_flushed, resolve_device


def _timed_steps(engine: Any, steps: int) -> list[float]:
    """Seconds of each of ``steps`` optimizer steps, after one untimed step."""
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        engine.train_step(engine.task.batches(i))
        if engine.task.device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def _eval_seconds(task: Any, probe: int) -> float | None:
    """Evaluation time of the whole validation set, from its first ``probe`` prompts per family
    (None where the task has no curriculum validation set to subsample)."""
    full = getattr(task, "val_examples", None)
    if not full:
        return None
    seen: dict[str, int] = {}
    subset = [ex for ex in full if seen.setdefault(ex.family, 0) < probe and _count(seen, ex)]
    probe_train = getattr(task, "train_probe", None)
    task.val_examples = subset
    if probe_train is not None:
        task.train_probe = probe_train[: len(subset)]
    try:
        t0 = time.perf_counter()
        task.evaluate()
        return (time.perf_counter() - t0) * len(full) / len(subset)
    finally:
        task.val_examples = full
        if probe_train is not None:
            task.train_probe = probe_train


def _count(seen: dict[str, int], ex: Any) -> bool:
    seen[ex.family] += 1
    return True


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA, allocated)"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"{kib / 2**20:.2f} GiB (process peak RSS)"


def estimate_model(cfg: TrainConfig, spec: str, device: torch.device, steps: int, probe: int):
    """(total steps, seconds per step, training s, evaluation s or None) of one model."""
    from .engine import Engine
    from .trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="cognate-dry-run-") as tmp:
        task = Trainer(cfg, spec, tmp).make_task(device)
        engine = Engine(task, cfg, tmp, log=lambda m: None)
        step_s = statistics.median(_timed_steps(engine, steps))
        per_eval = _eval_seconds(task, probe)
    total = task.total_steps
    n_evals = total // cfg.eval_every + (1 if total % cfg.eval_every else 0)
    return total, step_s, total * step_s, None if per_eval is None else n_evals * per_eval


def dry_run(cfg: TrainConfig, steps: int = 3, probe: int = 2) -> str:
    """The printed estimate of the whole run of ``cfg`` on its device."""
    lines, grand = [], 0.0
    device = resolve_device(cfg.device)
    with cpu_threads(cfg.threads), denormals_flushed(device):
        for spec in specializations(cfg):
            print(f"[{spec}] timing {steps} steps ...", file=sys.stderr, flush=True)
            total, step_s, train_s, eval_s = estimate_model(cfg, spec, device, steps, probe)
            grand += train_s + (eval_s or 0.0)
            ev = "not estimated" if eval_s is None else f"{hms(eval_s)}"
            lines.append(
                f"  {spec:10s} {total} steps x {step_s:.3f} s = {hms(train_s)} training, "
                f"evaluations {ev}"
            )
    head = f"dry run: preset {cfg.preset}, {cfg.model_preset}, device {device} (nothing written)"
    tail = f"  estimated total: {hms(grand)}; peak memory {_peak_memory(device)}"
    return "\n".join([head, *lines, tail])
