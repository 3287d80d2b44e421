"""``cognate-train``: train, grok, eval and generate.

Exit status: 0 success; 2 bad input (a flag, a config file, an output directory in use or not
writable, a checkpoint), reported as one line on stderr without a traceback; 1 a run that
stopped on a runtime problem (too many non-finite steps, a full disk), also one line; 130 / 143
a run stopped by SIGINT / SIGTERM (after checkpointing its last step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from .config import (
    GROK_PRESETS,
    TRAIN_PRESETS,
    ConfigError,
    GrokConfig,
    RunConfig,
    TrainConfig,
    build_config,
    field_meta,
    specializations,
)
from .signals import Interrupted, StopSignals

PROG = "cognate-train"


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help where the flag has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if shown and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit status 2; help shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return repr(value) if value == "" else str(value)


def add_config_flags(p: argparse.ArgumentParser, cls: type[RunConfig], preset: str) -> None:
    """One flag per config field, named after it (old names as aliases), typed by it; the help
    shows the value the default ``preset`` gives (the flag's own default stays None, so that
    only flags actually given override the preset and the TOML file)."""
    p.add_argument(
        "--config", metavar="FILE.toml", help="TOML file (top-level keys = config fields)"
    )
    defaults = cls()
    for key, value in (TRAIN_PRESETS if cls is TrainConfig else GROK_PRESETS)[preset].items():
        setattr(defaults, key, value)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = field_meta(cls, f.name)
        if not meta.get("flag") or f.name in cls.NO_FLAGS:
            continue
        flag = meta["flag"] if isinstance(meta["flag"], str) else "--" + f.name.replace("_", "-")
        names = [flag, *("--" + a.replace("_", "-") for a in meta["aliases"])]
        shown = "" if hints[f.name] is bool else f" (default: {_shown(getattr(defaults, f.name))})"
        kw: dict[str, Any] = {"dest": f.name, "help": (meta["help"] + shown).replace("%", "%%")}
        if hints[f.name] is bool:
            kw.update(action="store_const", const=not f.default)
        elif hints[f.name] in (int, float):
            kw["type"] = hints[f.name]
        kw.update({k: meta[k] for k in ("choices", "metavar") if k in meta})
        p.add_argument(*names, **kw)


DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"
THREADS_HELP = "CPU intra-op threads (0: torch's default; default: the checkpoint run's)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Phase 1 training of Cognate models with MuGrokfast.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train on the built-in curriculum (default: the quick preset)")
    t.add_argument("--preset", help=f"one of {', '.join(TRAIN_PRESETS)} (default: quick)")
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="time a few steps and print the estimated time of the whole run (training and "
        "evaluations); writes nothing",
    )
    add_config_flags(t, TrainConfig, "quick")

    g = sub.add_parser("grok", help="modular arithmetic until grokking (x*y mod 97 by default)")
    g.add_argument("--preset", help=f"one of {', '.join(GROK_PRESETS)} (default: grok)")
    add_config_flags(g, GrokConfig, "grok")

    e = sub.add_parser("eval", help="val loss and exact-match accuracy of a checkpoint")
    e.add_argument("--checkpoint", required=True, metavar="DIR", help="final/, best/ or a step")
    e.add_argument(
        "--n-val",
        type=int,
        help="score only the first N validation prompts per family (default: all of the run's)",
    )
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--threads", type=int, help=THREADS_HELP)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument(
        "--data",
        metavar="{seeds,NAME[,NAME...]}",
        help="real datasets (seeds: all six) scored on their held-out split (test, else "
        "validation)",
    )
    e.add_argument("--data-dir", metavar="DIR", help="DIR/<name>/ (default: the local HF cache)")
    e.add_argument("--limit", type=int, help="score only the first N rows of each dataset")
    e.add_argument(
        "--execute-code",
        action="store_true",
        help="mbpp pass@1: run each generated program (subprocess, time and memory limits)",
    )
    e.add_argument("--max-new-tokens", type=int, help="generation budget (gsm8k, svamp, mbpp)")
    e.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    e.add_argument("--skip-bad-rows", action="store_true", help="skip rows that do not fit")

    gen = sub.add_parser("generate", help="greedy completion of prompts by a checkpoint")
    gen.add_argument("--checkpoint", required=True, metavar="DIR", help="final/, best/ or a step")
    gen.add_argument("--prompt", required=True, action="append", help="may be repeated")
    gen.add_argument("--max-new-tokens", type=int, default=32, help="longest completion")
    gen.add_argument("--device", default="auto", help=DEVICE_HELP)
    gen.add_argument("--threads", type=int, help=THREADS_HELP)
    for command in (e, gen):
        command.add_argument(
            "--trm-cycles",
            type=int,
            metavar="K",
            help="refinement cycles at inference (default: as trained; more: test-time depth)",
        )
    return parser


def _config(kind: str, ns: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(TrainConfig if kind == "train" else GrokConfig)}
    flags = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    return build_config(kind, ns.preset, ns.config, flags)


def _spec_dir(cfg: TrainConfig, spec: str) -> Path:
    root = Path(cfg.output_dir)
    return root / spec if cfg.specialization == "all" else root


def _check_resume(cfg: RunConfig, root: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse a resume that would fail, before any model trains (one run may train three)."""
    from .checkpoints import CheckpointManager, resolve_resume

    resolve_resume(CheckpointManager(root, cfg.keep_last, fingerprint), cfg, lambda m: None)


def cmd_train(ns: argparse.Namespace) -> int:
    from .config import compat_fingerprint
    from .distributed import is_writer
    from .lock import output_lock
    from .progress import RunPlan
    from .report import render
    from .trainer import Trainer
    from .validation import preflight

    cfg = _config("train", ns)
    if ns.dry_run:
        from .dryrun import dry_run

        print(dry_run(cfg))
        return 0
    preflight(cfg)
    root = Path(cfg.output_dir)
    with output_lock(root):
        for spec in specializations(cfg):
            _check_resume(cfg, _spec_dir(cfg, spec), compat_fingerprint(cfg, spec))
        specs = specializations(cfg)
        plan = RunPlan(len(specs))  # an ETA over all the models in the progress lines
        summaries = [Trainer(cfg, s, _spec_dir(cfg, s), plan=plan).run() for s in specs]
        if not is_writer():  # under torchrun rank 0 writes the report
            return 0
        text = render(summaries, root)
        (root / "report.md").write_text(text + "\n")
        if len(summaries) > 1:
            models = {"world_size": summaries[0]["world_size"], "models": summaries}
            (root / "summary.json").write_text(json.dumps(models, indent=1))
    print(text)
    return 0


def cmd_grok(ns: argparse.Namespace) -> int:
    from .config import compat_fingerprint
    from .distributed import is_writer
    from .grok import run_grok
    from .lock import output_lock
    from .validation import preflight

    cfg = _config("grok", ns)
    preflight(cfg)
    out = Path(cfg.output_dir)
    with output_lock(out):
        _check_resume(cfg, out, compat_fingerprint(cfg, None))
        s = run_grok(cfg)
    if not is_writer():
        return 0
    fin = s["final"]
    print(
        f"grok {s['task']} with {s['optimizer']}: {s['steps']} steps in {s['time_s']:.1f} s "
        f"({s['stop_reason']})\n"
        f"  final train acc {fin.get('train/accuracy', float('nan')):.3f}, "
        f"val acc {fin.get('val/accuracy', float('nan')):.3f}\n"
        f"  grokking detected at step {s['grokking_step']}, converged at step "
        f"{s['converged_step']}, 95% val accuracy at step {s['steps_to_95_val_acc']}\n"
        f"  plots: {out / 'plots'}; metrics: {out / 'metrics.jsonl'}; summary: {out / 'summary.json'}"
    )
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _dispatch(ns: argparse.Namespace) -> int:
    from .commands import cmd_eval, cmd_generate

    handler = {"train": cmd_train, "grok": cmd_grok, "eval": cmd_eval, "generate": cmd_generate}
    return handler[ns.command](ns)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cognate-train`` console script and ``python -m cognate_train``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-") and args[0] not in ("-h", "--help"):
        args = ["train", *args]  # `cognate-train` alone runs `train` with the quick preset
    try:
        with StopSignals() as signals:
            return _run_command(args, signals)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _run_command(args: list[str], signals: StopSignals) -> int:
    """Run one command; every error it can end with becomes one line and an exit status.

    The arguments are parsed before torch and transformers are imported, so ``--help`` and a
    bad flag answer at once (the imports take seconds)."""
    try:
        ns = build_parser().parse_args(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        from .checkpoints import CheckpointError, StorageError
        from .engine import TrainingStopped

        signals.check()  # a signal while importing: stop here, before any work
        return _dispatch(ns)
    except (ConfigError, CheckpointError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (TrainingStopped, StorageError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk or a vanished directory while writing outputs
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"{PROG}: {_one_line(exc)}", file=sys.stderr)
        return exc.status
