"""The real-data task: one specialised Cognate model on local copies of the six datasets.

:class:`RealDataTask` is a :class:`~cognate_train.task.Task` for the training engine, the
counterpart of the curriculum's task: a fresh ``CognateForCausalLM`` sized for the tokenizer,
packed batches from :class:`~cognate_train.realdata.packing.PackedBatches` in the curriculum
stage of each step (`--data seeds`: foundation, reasoning, advanced; `--data NAMES`: one pool
for every stage), the model's own loss, and an evaluation on the examples held back from each
training split:

- ``val/loss``: cross-entropy per answer token given the prompt, pooled over all datasets, and
  ``val/loss/<name>`` per dataset;
- ``val/accuracy/<name>``: exact match of the final number (gsm8k, svamp; greedy, with a
  budget of the longest reference answer + 8 tokens) or multiple-choice acc (arc, hellaswag);
  ``val/accuracy`` is their mean. mbpp has no accuracy here (its pass@1 needs execution; see
  ``cognate-train eval --execute-code``).

The held-out splits (test, else validation) are never touched during training; ``cognate-train
eval --data NAMES`` reports them. Resume is exact: the stream is a function of (seed, stage,
epoch, position), and that position and the tokenizer's fingerprint are in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import checkpoints as ck
from .. import distributed as dist
from ..config import ConfigError, TrainConfig
from ..data import active_stages
from ..runtime import autocast
from ..trainer import StagedTask
from .cache import PreprocessCache
from .metrics import (
    answer_loss_sums,
    choice_loglikelihoods,
    choice_metrics,
    greedy_generate,
    number_exact_match,
    split_examples,
)
from .pipeline import holdout_indices, load_records
from .setup import build_real_data, parse_data
from .sources import DataError
from .templates import TEMPLATES, Record
from .tokenizer import load_tokenizer, tokenizer_fingerprint

__all__ = ["RealDataTask"]


class RealDataTask(StagedTask):
    """One specialization on real data, as the engine's task (see the module docstring)."""

    def __init__(
        self,
        cfg: TrainConfig,
        specialization: str,
        device: torch.device,
        model_factory: Callable[[Any], torch.nn.Module] | None = None,
        saved_tokenizer: Path | None = None,
    ) -> None:
        self._begin(cfg, specialization, device)
        self.stages_active = active_stages(cfg.stage_fractions)
        try:
            data = parse_data(cfg.data)
            # a resumed run keeps the tokenizer its checkpoint was trained with
            tokenizer: Any = cfg.tokenizer
            if saved_tokenizer is not None:
                tokenizer = load_tokenizer(saved_tokenizer)
            self.real = build_real_data(
                data,
                data_dir=cfg.data_dir or None,
                tokenizer=tokenizer,
                vocab_size=cfg.vocab_size,
                max_len=cfg.max_len,
                loss_on=cfg.loss_on,
                skip_bad_rows=cfg.skip_bad_rows,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                n_val=cfg.n_val,
                cache=PreprocessCache(cfg.cache_dir or None),
                active_stages=None if data != "seeds" else self.stages_active,
            )
        except (DataError, ValueError) as exc:
            msg = str(exc)
            if msg.startswith("--tokenizer "):
                raise ConfigError(msg.removeprefix("--"), field="tokenizer") from None
            raise ConfigError(f"data: {msg}", field="data") from None
        self.tokenizer = self.real.tokenizer
        self.names = [n for n in self.real.val]
        self.stream = self.real.batches
        self._end(model_factory, self._stream_stage(self.stages_active[-1]))
        self._val_records: dict[str, list[Record]] | None = None

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        rows = {s: int(p["input_ids"].shape[0]) for s, p in self.stream.pools.items()}
        skipped = len(self.real.summary.get("skipped", []))
        return (
            f"[{self.name}] {self.cfg.model_preset} ({n / 1e6:.2f}M params), optimizer "
            f"{self.cfg.optimizer}, {self.total_steps} steps, device {self.device}; data "
            f"{self.cfg.data}: {', '.join(self.names)}; vocab {len(self.tokenizer)}; packed rows "
            f"of {self.cfg.max_len} per stage {rows}; loss on {self.cfg.loss_on}"
            + (f"; {skipped} bad rows skipped" if skipped else "")
        )

    # -- training ------------------------------------------------------------------------------

    def _stream_stage(self, stage: str) -> str:
        """The pool a stage trains on: its own (seeds) or the one pool of --data NAMES."""
        return stage if stage in self.stream.pools else next(iter(self.stream.pools))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tokenizer": tokenizer_fingerprint(self.tokenizer)}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        mine = tokenizer_fingerprint(self.tokenizer)
        if state.get("tokenizer") != mine:
            raise ck.CheckpointError(
                "tokenizer: the checkpoint was trained with another tokenizer "
                f"({str(state.get('tokenizer'))[:12]} vs {mine[:12]}); resume with the same "
                "--tokenizer (or --resume never)"
            )
        try:
            super().load_state_dict(state, step)
        except ValueError as exc:
            raise ck.CheckpointError(f"data: {exc}") from None

    # -- evaluation and outputs ----------------------------------------------------------------

    def val_records(self) -> dict[str, list[Record]]:
        """The held-back training examples as records (loaded on first use, in holdout order)."""
        if self._val_records is None:
            cfg, out = self.cfg, {}
            for name, split in self.real.val.items():
                loaded = load_records(
                    name, "train", data_dir=cfg.data_dir or None, skip_bad_rows=cfg.skip_bad_rows
                )
                n = len(loaded.records)
                chosen = holdout_indices(n, split.n_examples, cfg.seed)
                out[name] = [loaded.records[i] for i in chosen]
            self._val_records = out
        return self._val_records

    def _accuracy_counts(self, name: str, records: list[Record]) -> list[float] | None:
        """[correct, records] of this rank's shard of ``records`` (None: no accuracy metric).
        A generation budget comes from all of ``records``, so a shard decodes as the whole."""
        cfg, model, tok, dev = self.cfg, self.model, self.tokenizer, self.device
        kind, part = TEMPLATES[name].kind, dist.shard(records)
        if kind not in ("choice", "number"):
            return None
        if not part:
            return [0, 0]
        if kind == "choice":
            lls = choice_loglikelihoods(
                model, tok, part, cfg.eval_batch_size, dev, self._model_len()
            )
            return [round(choice_metrics(part, lls)["acc"] * len(part)), len(part)]
        answers = tok([r.answer for r in records], add_special_tokens=False)["input_ids"]
        budget = max(len(a) for a in answers) + 8
        em = number_exact_match(
            model, tok, part, budget, cfg.eval_batch_size, dev, self._model_len()
        )
        return [round(em["exact_match"] * len(part)), len(part)]

    def _model_len(self) -> int:
        from .evaluate import model_max_len

        return model_max_len(self.model, self.cfg.max_len)

    def evaluate(self) -> dict[str, float]:
        """Answer loss per dataset and pooled, accuracy per dataset and their mean; under
        torchrun each rank scores its shard of every dataset and the sums are reduced."""
        cfg, model, tok, dev = self.cfg, self.model, self.tokenizer, self.device
        sums: dict[str, list[float]] = {}
        with autocast(dev, self.amp):
            for name, split in self.real.val.items():
                part = dist.shard(split_examples(split))
                sums[f"val/loss/{name}"] = answer_loss_sums(
                    model, part, tok.pad_token_id, cfg.eval_batch_size, dev, self._model_len()
                )
            for name, records in self.val_records().items():
                counts = self._accuracy_counts(name, records)
                if counts is not None:
                    sums[f"val/accuracy/{name}"] = counts
        total = dist.reduce_sums(sums)
        losses = [v for k, v in total.items() if k.startswith("val/loss/")]
        result = {"val/loss": sum(s for s, _ in losses) / sum(c for _, c in losses)}
        result.update({k: s / c for k, (s, c) in total.items() if k.startswith("val/loss/")})
        accs = {k: s / c for k, (s, c) in total.items() if k.startswith("val/accuracy/")}
        result["val/accuracy"] = sum(accs.values()) / len(accs) if accs else 0.0
        result.update(accs)
        return result

    def samples(self, engine: Any) -> list[dict[str, str]]:
        """Greedy answers of the final (EMA) model to one held-back prompt per dataset."""
        from ..ema import maybe_swapped_in

        chosen = [(n, rs[0]) for n, rs in self.val_records().items()][: self.cfg.samples]
        if not chosen:
            return []
        with maybe_swapped_in(engine.ema, self.model), autocast(self.device, self.amp):
            outs = greedy_generate(
                self.model,
                self.tokenizer,
                [r.prompt for _, r in chosen],
                max_new_tokens=48,
                device=self.device,
                max_len=self._model_len(),
            )
        return [
            {"family": n, "prompt": r.prompt, "expected": r.answer, "generated": o}
            for (n, r), o in zip(chosen, outs, strict=True)
        ]

    def summary(self, engine: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
        info = dict(self.real.summary)
        info["skipped_rows"] = len(info.pop("skipped", []))
        title = f"{self.cfg.preset} / {self.name} / data {self.cfg.data}"
        head = self._summary_head(title, records)
        return {**head, "data": info, "samples": self.samples(engine)}
