"""The curriculum task: one specialised Cognate model on the built-in curriculum.

:class:`CurriculumTask` gives the engine (:mod:`cognate_train.engine`) a fresh
``CognateForCausalLM``, batches from :class:`~cognate_train.data.CurriculumDataset` in the
curriculum stage of each step, the model's own loss, and an evaluation of answer-only val loss
and exact-match accuracy per family (plus train accuracy for grokking detection).
:class:`Trainer` runs it.

Deep supervision (``steps_per_batch`` N > 1), as TRM: each batch is used for up to N
consecutive optimizer steps, each its own forward, backward and optimizer step, and each
forward continues from the detached (y, z) that the previous step on the same batch returned
(``recursion_state`` in and out: the model itself stays pure). A new batch starts again from
(x, x). With ``supervision_early_exit`` the batch is also left early, once the halting head
says every sequence in it is done (TRM's training-time halting, per sequence: every answer
token's final halting probability over ``act_threshold``). ``max_steps`` counts optimizer
steps. The carried (y, z), the step within the batch and the halting votes are in the task's
checkpoint state, so a run resumed mid-batch continues exactly.

Determinism: the model is initialised from ``seed``; batches are a pure function of (seed,
stage, epoch, position); dropout draws from the torch RNG, which is checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import checkpoints as ck
from . import distributed as dist
from .config import ConfigError, TrainConfig, compat_fingerprint
from .data import STAGES, CurriculumDataset, active_stages, families_for_stage, stage_at
from .engine import Engine, TrainingStopped, run
from .progress import RunPlan
from .runtime import autocast, seed_everything

__all__ = ["CurriculumTask", "Trainer", "TrainingStopped", "build_model", "stage_at"]


def build_model(
    model_preset: str, specialization: str, tokenizer: Any, max_len: int
) -> torch.nn.Module:
    """A fresh ``CognateForCausalLM`` sized by ``model_preset`` with the tokenizer's vocabulary."""
    from cognate_model import CognateConfig, CognateForCausalLM
    from cognate_model.configuration_cognate import PRESETS

    overrides: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if PRESETS[model_preset]["max_seq_len"] < max_len:
        overrides["max_seq_len"] = max_len
    return CognateForCausalLM(CognateConfig.from_preset(model_preset, specialization, **overrides))


def model_aux_metrics(output: Any) -> dict[str, float]:
    """Auxiliary scalars a model reports (ACT halting, LTM gate, ...), e.g. ``act/steps_mean``."""
    found = getattr(output, "metrics", None)
    if not isinstance(found, dict):
        return {}
    out = {}
    for key, value in found.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key if "/" in key else f"model/{key}"] = float(value)
    return out


def _sequences_halted(output: Any, batch: dict[str, torch.Tensor], model: Any) -> bool | None:
    """Does the halting head say every sequence of the micro-batch is done? A sequence is when
    each of its answer tokens (label not -100) has a final-cycle halting probability over the
    model's ``act_threshold`` (TRM halts a sequence on q_halt > 0). None without a head."""
    probs = getattr(output, "halt_probs", None)
    if probs is None:
        return None
    from cognate_model.heads import shift_labels

    answer = shift_labels(batch["labels"]) != -100  # (B, T): positions predicting an answer
    over = probs[-1].detach() > model.config.act_threshold
    return bool((over | ~answer).all())


def _probe(train: list, n_per_family: int) -> list:
    """The first ``n_per_family`` training examples of each family: the train-accuracy probe of
    the grokking detector (as many train as val examples)."""
    counts: dict[str, int] = {}
    probe = []
    for ex in train:
        if counts.get(ex.family, 0) < n_per_family:
            counts[ex.family] = counts.get(ex.family, 0) + 1
            probe.append(ex)
    return probe


class StagedTask:
    """The curriculum half of a language-model task: micro-batches drawn from a `StagedStream`
    (``self.stream``) in the stage of each step, one draw per ``steps_per_batch`` optimizer
    steps, and the draw position in the checkpoint so a resumed run is bit-exact.

    The host class sets ``cfg``, ``total_steps``, ``stream``, ``model``, ``tokenizer``,
    ``device``, ``amp`` (bf16 autocast on or off), and
    ``current = []``, ``data_at_draw = stream.state_dict()``, ``draw_stage = STAGES[0]``.
    """

    console_every = 1
    save_best = True

    def _begin(self, cfg: TrainConfig, specialization: str, device: torch.device) -> None:
        """The settings every LM task starts from: config, name, device, resume fingerprint."""
        self.cfg, self.name, self.device = cfg, specialization, device
        self.fingerprint = compat_fingerprint(cfg, specialization)
        self.amp = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")

    def _end(self, model_factory: Callable[[Any], torch.nn.Module] | None, last: str) -> None:
        """Once ``stream`` and ``tokenizer`` exist: the step count (``last``: the stream stage
        epochs count in), the seeded model, and the draw position before the first step."""
        cfg = self.cfg
        self.total_steps = self._epochs_to_steps(last)
        seed_everything(cfg.seed)
        make = model_factory or (
            lambda tok: build_model(cfg.model_preset, self.name, tok, cfg.max_len)
        )
        self.model = make(self.tokenizer).to(self.device)
        self.current: list[dict[str, torch.Tensor]] = []
        self.data_at_draw: dict[str, Any] = self.stream.state_dict()
        self.draw_stage = STAGES[0]
        self._new_batch()

    def _new_batch(self) -> None:
        """Per micro-batch of ``current``: carried (y, z) and halting vote; no steps done yet."""
        self.supervision_step = 0
        self.carry: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.current)
        self.halt_votes: list[bool | None] = [None] * len(self.current)

    def _batch_done(self) -> bool:
        """The current batch has had its N steps, or (early exit) every rank's micro-batches
        voted halt on the last step."""
        if not self.current or self.supervision_step >= self.cfg.steps_per_batch:
            return True
        if not self.cfg.supervision_early_exit:
            return False
        mine = [v for v in self.halt_votes if v is not None]
        going_on = int(not mine or not all(mine))
        return dist.agree_max(going_on, self.device) == 0

    def _stream_stage(self, stage: str) -> str:
        """The stream's stage that curriculum stage `stage` trains on."""
        return stage

    def _epochs_to_steps(self, last_stage: str) -> int:
        """`cfg.max_steps`, or `cfg.epochs` epochs of the last active stage in optimizer steps."""
        cfg = self.cfg
        if cfg.epochs <= 0:
            return cfg.max_steps
        per_epoch = self.stream.steps_per_epoch(last_stage) // dist.micro_batches(cfg.grad_accum)
        per_epoch *= cfg.steps_per_batch
        return max(1, int(round(cfg.epochs * max(1, per_epoch))))

    def _draw(self, stage: str) -> list[dict[str, torch.Tensor]]:
        n = dist.micro_batches(self.cfg.grad_accum)  # all ranks' (the engine shards them)
        return [self.stream.next_batch(self._stream_stage(stage)) for _ in range(n)]

    def batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """A new draw (in the curriculum stage of ``step``) once the current batch is done."""
        if self._batch_done():
            self.data_at_draw = self.stream.state_dict()
            self.draw_stage = stage_at(step, self.total_steps, self.cfg.stage_fractions)
            self.current = self._draw(self.draw_stage)
            self._new_batch()
        self.supervision_step += 1
        return self.current

    def _summary_head(self, title: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The summary keys both LM tasks report: title, specialization, model preset and the ACT
        halting cycle (mean of the last 5 logged training values; None without ACT)."""
        act = [r["act/steps_mean"] for r in records if "act/steps_mean" in r]
        return {
            "title": title,
            "specialization": self.name,
            "model_preset": self.cfg.model_preset,
            "act_cycles_mean": (sum(act[-5:]) / len(act[-5:])) if act else None,
        }

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, dict[str, float]]:
        """The model's loss on one micro-batch, continuing from the (y, z) this micro-batch's
        previous supervision step returned (deep supervision; none on a batch's first step)."""
        i = next((k for k, mb in enumerate(self.current) if mb is batch), None)
        carried = None if i is None else self.carry[i]
        mb = {k: v.to(self.device) for k, v in batch.items()}
        extra = {"recursion_state": carried} if carried is not None else {}
        with autocast(self.device, self.amp):
            out = self.model(
                input_ids=mb["input_ids"],
                attention_mask=mb["attention_mask"],
                labels=mb["labels"],
                **extra,
            )
        if self.cfg.steps_per_batch > 1 and i is not None:
            self.carry[i] = getattr(out, "recursion_state", None)
            self.halt_votes[i] = _sequences_halted(out, mb, self.model)
        metrics = model_aux_metrics(out)
        metrics["trm/supervision_step"] = float(self.supervision_step)
        # real tokens: packed rows (all ones) count every position
        return out.loss, int(mb["attention_mask"].sum()), metrics

    def log_extras(self, step: int) -> dict[str, float]:
        stage = stage_at(step, self.total_steps, self.cfg.stage_fractions)
        return {"curriculum/stage": STAGES.index(stage)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "data": self.stream.state_dict(),
            "data_at_draw": self.data_at_draw,
            "draw_stage": self.draw_stage,
            "supervision_step": self.supervision_step,
            "carry": [None if c is None else tuple(t.cpu() for t in c) for c in self.carry],
            "halt_votes": list(self.halt_votes),
        }

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        self.data_at_draw = state["data_at_draw"]
        done = state.get("supervision_step", step % self.cfg.steps_per_batch or None)
        if done is not None and 0 < done < self.cfg.steps_per_batch:
            # mid-way through a batch's supervision steps: redraw that batch, carry its state
            self.stream.load_state_dict(state["data_at_draw"])
            self.draw_stage = state["draw_stage"]
            self.current = self._draw(self.draw_stage)
            self._new_batch()
            self.supervision_step = done
            carry = state.get("carry") or self.carry
            self.carry = [None if c is None else tuple(t.to(self.device) for t in c) for c in carry]
            self.halt_votes = list(state.get("halt_votes") or self.halt_votes)
        self.stream.load_state_dict(state["data"])

    def save_weights(self, directory: Path) -> None:
        ck.save_weights(self.model, directory)
        self.tokenizer.save_pretrained(directory)


class CurriculumTask(StagedTask):
    """One specialization on the curriculum, as the engine's :class:`~cognate_train.engine.Task`."""

    def __init__(
        self,
        cfg: TrainConfig,
        specialization: str,
        device: torch.device,
        model_factory: Callable[[Any], torch.nn.Module] | None = None,
    ) -> None:
        from .data import make_split, split_by_stage
        from .tokenizer import build_tokenizer

        self._begin(cfg, specialization, device)
        self.tokenizer = build_tokenizer()
        active = active_stages(cfg.stage_fractions)
        try:
            train, self.val_examples = make_split(
                families_for_stage(active[-1]), cfg.n_train, cfg.n_val, cfg.seed, cfg.max_len
            )
        except ValueError as exc:
            raise ConfigError(f"n-train/n-val/max-len: {exc}") from None
        self.train_probe = _probe(train, cfg.n_val)
        by_stage = {s: ex for s, ex in split_by_stage(train).items() if s in active}
        try:
            self.stream = CurriculumDataset(
                self.tokenizer, by_stage, cfg.batch_size, cfg.max_len, cfg.seed
            )
        except ValueError as exc:
            raise ConfigError(f"batch-size: {exc}") from None
        self._end(model_factory, active[-1])

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (
            f"[{self.name}] {self.cfg.model_preset} ({n / 1e6:.2f}M params), optimizer "
            f"{self.cfg.optimizer}, {self.total_steps} steps, device {self.device}"
        )

    # -- evaluation and outputs ----------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Val loss and exact match (and train-probe accuracy); under torchrun each rank scores
        its shard of the examples and the sums are reduced (:func:`distributed.reduce_sums`)."""
        from .evaluation import exact_match_counts, val_loss_sums

        cfg, model, tok, dev = self.cfg, self.model, self.tokenizer, self.device
        bs, val = cfg.eval_batch_size, dist.shard(self.val_examples)
        with autocast(dev, self.amp):
            sums = {"val/loss": val_loss_sums(model, tok, val, bs, cfg.max_len, dev)}
            em = exact_match_counts(model, tok, val, bs, device=dev)
            sums.update({f"val/{k}": v for k, v in em.items()})
            if cfg.grokking_aware:
                probe = dist.shard(self.train_probe)
                tr = exact_match_counts(model, tok, probe, bs, device=dev)
                sums["train/accuracy"] = tr.get("accuracy", [0, 0])
        return dist.reduced_means(sums)

    def samples(self, engine: Engine) -> list[dict[str, str]]:
        """Greedy answers of the final (EMA) model to one val prompt per family."""
        from .ema import maybe_swapped_in
        from .evaluation import generate_answers

        first: dict[str, Any] = {}
        for ex in self.val_examples:
            first.setdefault(ex.family, ex)
        chosen = list(first.values())[: self.cfg.samples]
        if not chosen:
            return []
        with maybe_swapped_in(engine.ema, self.model), autocast(self.device, self.amp):
            outs = generate_answers(
                self.model,
                self.tokenizer,
                [e.prompt for e in chosen],
                max_new_tokens=16,
                device=self.device,
            )
        return [
            {"family": e.family, "prompt": e.prompt, "expected": e.answer, "generated": o}
            for e, o in zip(chosen, outs, strict=True)
        ]

    def summary(self, engine: Engine, records: list[dict[str, Any]]) -> dict[str, Any]:
        head = self._summary_head(f"{self.cfg.preset} / {self.name}", records)
        return {**head, "samples": self.samples(engine)}


class Trainer:
    """Trains one specialization into ``out_dir``: builds its task and runs the engine."""

    def __init__(
        self,
        cfg: TrainConfig,
        specialization: str,
        out_dir: str | Path,
        *,
        model_factory: Callable[[Any], torch.nn.Module] | None = None,
        log: Callable[[str], None] | None = None,
        plan: RunPlan | None = None,
    ) -> None:
        self.cfg, self.spec, self.out = cfg, specialization, Path(out_dir)
        self.model_factory, self.log, self.plan = model_factory, log, plan

    def make_task(self, device: torch.device) -> Any:
        if self.cfg.data == "curriculum":
            return CurriculumTask(self.cfg, self.spec, device, self.model_factory)
        from .realdata.task import RealDataTask

        return RealDataTask(
            self.cfg, self.spec, device, self.model_factory, self._resume_tokenizer()
        )

    def _resume_tokenizer(self) -> Path | None:
        """The tokenizer of the checkpoint this run resumes from, if it resumes (real data):
        a resumed run must tokenize exactly as the run it continues."""
        if self.cfg.resume == "never":
            return None
        manager = ck.CheckpointManager(
            self.out, self.cfg.keep_last, compat_fingerprint(self.cfg, self.spec)
        )
        found = ck.resolve_resume(manager, self.cfg, lambda m: None)
        if found is None or not (found[0] / "tokenizer.json").is_file():
            return None
        return found[0]

    def run(self) -> dict[str, Any]:
        """Train (resuming if asked), evaluate, checkpoint, plot; returns the summary."""
        return run(self.cfg, self.out, self.make_task, self.log, self.plan)
