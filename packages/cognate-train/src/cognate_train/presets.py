"""Named presets: the values a preset gives over the config dataclasses' defaults.

``train`` presets apply to :class:`~cognate_train.config.TrainConfig`, ``grok`` presets to
:class:`~cognate_train.config.GrokConfig`; a TOML file and flags override them in turn.
"""

from __future__ import annotations

from typing import Any

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # seconds on a CPU: used by the tests (one small model, a few dozen steps)
    "smoke": dict(
        specialization="reasoning",
        model_preset="cognate-tiny",
        output_dir="runs/smoke",
        max_steps=24,
        batch_size=8,
        max_len=48,
        n_train=40,
        n_val=4,
        eval_every=12,
        log_every=4,
        checkpoint_every=8,
        keep_last=2,
        warmup_steps=4,
        samples=2,
        eval_batch_size=32,
        threads=1,
    ),
    # a few CPU minutes for all three specializations: the README's main command
    "quick": dict(
        specialization="all",
        model_preset="cognate-tiny",
        output_dir="runs/quick",
        max_steps=900,
        batch_size=32,
        max_len=64,
        n_train=400,
        n_val=32,
        # chosen by a sweep of muon_lr (0.03 / 0.01 / 0.005) and lr (1e-3 / 3e-3 / 1e-2) on the
        # speed model at 900 steps: the pair with the lowest val loss and best exact match
        lr=3e-3,
        muon_lr=0.01,
        # Muon + AdamW without the Grokfast filter: at a matched Muon lr the filter gave no
        # lower val loss on this recipe (benchmarks/README.md, section 3); --optimizer
        # mugrokfast turns it on
        optimizer="muon",
        eval_every=300,
        checkpoint_every=300,
        # a 0.14M-parameter model gains nothing from intra-op threads; extra threads only spin
        threads=1,
    ),
    # the Phase 1 run: 25M models, curriculum over 10 epochs, GPU-sized
    "phase1": dict(
        specialization="all",
        model_preset="cognate-25m",
        output_dir="runs/phase1",
        max_steps=0,
        epochs=10.0,
        batch_size=16,
        grad_accum=4,
        max_len=256,
        n_train=4000,
        n_val=100,
        stage_fractions=[0.3, 0.3, 0.4],
        lr=5e-4,
        muon_lr=5e-3,
        optimizer="muon",  # as quick: the filter (the seeds' lambda 0.02) showed no gain
        grad_clip=1.0,
        warmup_steps=500,
        min_lr_ratio=0.01,
        early_stopping_patience=3,
        early_stopping_min_delta=0.01,
        eval_every=1000,
        log_every=50,
        checkpoint_every=1000,
        keep_last=3,
        ema_decay=0.999,
        eval_batch_size=128,
    ),
}

GROK_PRESETS: dict[str, dict[str, Any]] = {
    "grok": {},
    # seconds: a tiny prime and model for the tests; not expected to grok in 60 steps
    "smoke": dict(
        output_dir="runs/grok-smoke",
        p=11,
        max_steps=60,
        batch_size=32,
        d_model=32,
        n_heads=2,
        eval_every=5,
        checkpoint_every=20,
    ),
}
