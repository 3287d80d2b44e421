"""``cognate-train``: train, grok, eval and generate.

Exit status: 0 success; 2 bad input (a flag, a config file, an output directory, a checkpoint),
reported as one line on stderr without a traceback; 1 a run that stopped on a runtime problem
(e.g. too many non-finite steps), also one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointError
from .config import (
    GROK_PRESETS,
    OPTIMIZERS,
    SPECIALIZATIONS,
    TRAIN_PRESETS,
    ConfigError,
    GrokConfig,
    TrainConfig,
    build_config,
    compat_fingerprint,
    specializations,
)

PROG = "cognate-train"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="FILE.toml", help="TOML file (top-level keys = config fields)"
    )
    p.add_argument("--output-dir", help="where metrics, checkpoints, plots and summary go")
    p.add_argument("--max-steps", type=int, help="optimizer steps to train")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, help="AdamW learning rate (peak)")
    p.add_argument("--muon-lr", type=float, help="Muon learning rate (mugrokfast, muon)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grokfast-alpha", type=float, help="EMA decay of the Grokfast filter")
    p.add_argument("--grokfast-lambda", type=float, help="Grokfast amplification")
    p.add_argument("--lambda-boost", type=float, help="lambda multiplier once grokking is detected")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--grad-clip", type=float, help="max grad norm (0: no clipping)")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--keep-last", type=int, help="step checkpoints to keep")
    p.add_argument("--resume", metavar="{auto,never,PATH}", help="default auto")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (0: torch's default)")
    p.add_argument("--log", help="extra metric sinks, comma-separated: wandb, tensorboard")
    p.add_argument("--grok-window", type=int, help="detector: evaluations in the reference window")
    p.add_argument("--grok-gap-threshold", type=float, help="detector: train-val gap threshold")
    p.add_argument("--grok-jump-threshold", type=float, help="detector: val accuracy jump")
    p.add_argument("--grok-patience", type=int, help="detector: small-gap evals for convergence")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Phase 1 training of Cognate models with MuGrokfast.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train on the built-in curriculum (default: the quick preset)")
    t.add_argument("--preset", help=f"one of {', '.join(TRAIN_PRESETS)} (default quick)")
    t.add_argument("--specialization", help=f"{', '.join(SPECIALIZATIONS)} or all")
    t.add_argument("--model-preset", help="cognate-tiny, cognate-small or cognate-25m")
    t.add_argument("--epochs", type=float, help="epochs over the train split (overrides max-steps)")
    t.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    t.add_argument("--max-len", type=int, help="longest training row in tokens")
    t.add_argument("--n-train", type=int, help="training examples per task family")
    t.add_argument("--n-val", type=int, help="validation examples per task family")
    t.add_argument(
        "--supervision-steps", type=int, help="optimizer steps per batch (deep supervision)"
    )
    t.add_argument("--ema-decay", type=float, help="weight EMA for evaluation (0: off)")
    t.add_argument("--early-stopping-patience", type=int, help="evals without improvement (0: off)")
    t.add_argument(
        "--min-delta",
        dest="early_stopping_min_delta",
        type=float,
        help="improvement in val loss that resets early stopping",
    )
    t.add_argument(
        "--grokking-aware",
        action="store_const",
        const=True,
        help="track train/val accuracy, boost lambda on grokking, stop on convergence",
    )
    t.add_argument("--precision", help="auto (bf16 on CUDA), fp32 or bf16")
    t.add_argument("--samples", type=int, help="sample generations per model in the report")
    _common_flags(t)

    g = sub.add_parser("grok", help="modular arithmetic until grokking (x*y mod 97 by default)")
    g.add_argument("--preset", help=f"one of {', '.join(GROK_PRESETS)} (default grok)")
    g.add_argument("--op", help="one of * + - /")
    g.add_argument("--p", type=int, help="the prime modulus (default 97)")
    g.add_argument("--train-fraction", type=float, help="share of the table used for training")
    g.add_argument(
        "--no-stop",
        dest="stop_on_convergence",
        action="store_const",
        const=False,
        help="keep training after convergence until max-steps",
    )
    _common_flags(g)

    e = sub.add_parser("eval", help="val loss and exact-match accuracy of a checkpoint")
    e.add_argument("--checkpoint", required=True, metavar="DIR")
    e.add_argument("--n-val", type=int, help="validation examples per family (at most the run's)")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    gen = sub.add_parser("generate", help="greedy completion of prompts by a checkpoint")
    gen.add_argument("--checkpoint", required=True, metavar="DIR")
    gen.add_argument("--prompt", required=True, action="append", help="may be repeated")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--device", default="auto")
    return parser


_NOT_FIELDS = {"command", "config", "preset", "checkpoint", "json", "prompt", "max_new_tokens"}


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if k not in _NOT_FIELDS and v is not None}


def _preflight_common(cfg: TrainConfig | GrokConfig) -> None:
    """Output dir, optimizer package, metric sinks and device, checked before any work."""
    from .metrics import check_backends
    from .trainer import resolve_device

    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output-dir: {out} exists and is not a directory")
    if cfg.optimizer != "adamw":
        try:
            import mugrokfast  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"optimizer: {cfg.optimizer} needs mugrokfast ({exc})") from None
    check_backends(cfg.log)
    resolve_device(cfg.device)


def _preflight_train(cfg: TrainConfig) -> None:
    """Checks that need imports or the file system, done before any training starts."""
    from .checkpoints import fingerprint_mismatch, read_manifest

    _preflight_common(cfg)
    try:
        from cognate_model.configuration_cognate import PRESETS
    except ImportError as exc:
        raise ConfigError(f"model-preset: cognate_model is not importable ({exc})") from None
    if cfg.model_preset not in PRESETS:
        raise ConfigError(
            f"model-preset: unknown {cfg.model_preset!r} (choose from {', '.join(PRESETS)})"
        )
    for spec in specializations(cfg):
        root = _spec_dir(cfg, spec)
        ckdir = root / "checkpoints"
        steps = sorted(ckdir.glob("step-*")) if ckdir.is_dir() else []
        if not steps:
            continue
        if cfg.resume == "never":
            raise ConfigError(
                f"resume: output dir {root} already holds checkpoints ({steps[-1].name}); "
                "use --resume auto to continue that run or choose another --output-dir"
            )
        for path in reversed(steps):
            try:
                manifest = read_manifest(path)
            except CheckpointError:
                continue
            diff = fingerprint_mismatch(
                manifest.get("fingerprint", {}), compat_fingerprint(cfg, spec)
            )
            if diff is not None:
                raise ConfigError(
                    f"output-dir: {root} holds checkpoints of an incompatible run ({diff}); "
                    "choose another --output-dir"
                )
            break


def _spec_dir(cfg: TrainConfig, spec: str) -> Path:
    root = Path(cfg.output_dir)
    return root / spec if cfg.specialization == "all" else root


def cmd_train(ns: argparse.Namespace) -> int:
    cfg = build_config("train", ns.preset, ns.config, _flags(ns))
    assert isinstance(cfg, TrainConfig)
    _preflight_train(cfg)
    from .report import render
    from .trainer import Trainer

    summaries = []
    for spec in specializations(cfg):
        summaries.append(Trainer(cfg, spec, _spec_dir(cfg, spec)).run())
    root = Path(cfg.output_dir)
    text = render(summaries, root)
    (root / "report.md").write_text(text + "\n")
    if len(summaries) > 1:
        with (root / "summary.json").open("w") as fh:
            json.dump({"world_size": summaries[0]["world_size"], "models": summaries}, fh, indent=1)
    print(text)
    return 0


def cmd_grok(ns: argparse.Namespace) -> int:
    cfg = build_config("grok", ns.preset, ns.config, _flags(ns))
    assert isinstance(cfg, GrokConfig)
    out = Path(cfg.output_dir)
    _preflight_common(cfg)
    from .grok import run_grok
    from .trainer import cpu_threads

    with cpu_threads(cfg.threads):
        s = run_grok(cfg)
    fin = s["final"]
    print(
        f"grok {s['task']} with {s['optimizer']}: {s['steps']} steps in {s['time_s']:.1f} s "
        f"({s['stop_reason']})"
    )
    print(
        f"  final train acc {fin.get('train/accuracy', float('nan')):.3f}, "
        f"val acc {fin.get('val/accuracy', float('nan')):.3f}"
    )
    print(
        f"  grokking detected at step {s['grokking_step']}, converged at step {s['converged_step']}, "
        f"95% val accuracy at step {s['steps_to_95_val_acc']}"
    )
    print(
        f"  plots: {out / 'plots'}; metrics: {out / 'metrics.jsonl'}; summary: {out / 'summary.json'}"
    )
    return 0


def _load_checkpoint_dir(path: str) -> tuple[Path, dict[str, Any]]:
    from .checkpoints import MANIFEST, load_json, verify

    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"checkpoint: no such directory: {d}")
    if (d / MANIFEST).is_file():
        verify(d)
    state_path = d / "trainer_state.json"
    if not state_path.is_file():
        raise ConfigError(
            f"checkpoint: {d} has no trainer_state.json (not a cognate-train checkpoint)"
        )
    return d, load_json(state_path)


def _load_hf(d: Path, device: str):
    import cognate_model  # noqa: F401  (registers the model with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .trainer import resolve_device

    dev = resolve_device(device)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d).to(dev).eval()
    return model, tok, dev


def cmd_eval(ns: argparse.Namespace) -> int:
    d, ts = _load_checkpoint_dir(ns.checkpoint)
    cfg = ts["config"]
    if "p" in cfg:  # a grok checkpoint
        from .checkpoints import load_weights
        from .grok import GrokDecoder, score
        from .grok_data import modular_dataset, vocab_size

        model = GrokDecoder(vocab_size(cfg["p"]), cfg["d_model"], cfg["n_layers"], cfg["n_heads"])
        load_weights(model, d)
        train, val = modular_dataset(cfg["p"], cfg["op"], cfg["train_fraction"], cfg["seed"])
        result = {"step": ts["step"], "train/loss": None, "train/accuracy": None}
        result["train/loss"], result["train/accuracy"] = score(model, train)
        result["val/loss"], result["val/accuracy"] = score(model, val)
    else:
        from .data import families_for_stage, make_split
        from .evaluation import exact_match, val_loss

        if ns.n_val is not None and not 1 <= ns.n_val <= cfg["n_val"]:
            # the split's first n_val prompts per family are validation, the rest training: a
            # larger n_val would score examples the model was trained on
            raise ConfigError(
                f"n-val: must be in [1, {cfg['n_val']}] (the run's validation size), got {ns.n_val}"
            )
        model, tok, dev = _load_hf(d, ns.device)
        stages = [
            s
            for s, f in zip(
                ("foundation", "reasoning", "advanced"), cfg["stage_fractions"], strict=True
            )
            if f > 0
        ]
        n_val = ns.n_val or cfg["n_val"]
        _, val = make_split(
            families_for_stage(stages[-1]), cfg["n_train"], n_val, cfg["seed"], cfg["max_len"]
        )
        result = {
            "step": ts["step"],
            "specialization": ts.get("specialization"),
            "val/loss": val_loss(model, tok, val, cfg["eval_batch_size"], cfg["max_len"], dev),
        }
        em = exact_match(model, tok, val, cfg["eval_batch_size"], device=dev)
        result.update({f"val/{k}": v for k, v in em.items()})
    if ns.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"checkpoint {d} (step {result['step']})")
        for k, v in result.items():
            if k != "step":
                print(f"  {k:32s} {v:.4f}" if isinstance(v, float) else f"  {k:32s} {v}")
    return 0


def cmd_generate(ns: argparse.Namespace) -> int:
    from .evaluation import generate_answers

    if ns.max_new_tokens < 1:
        raise ConfigError(f"max-new-tokens: must be >= 1, got {ns.max_new_tokens}")
    d, ts = _load_checkpoint_dir(ns.checkpoint)
    if "p" in ts["config"]:
        raise ConfigError("checkpoint: generate needs a train checkpoint, not a grok one")
    model, tok, dev = _load_hf(d, ns.device)
    outs = generate_answers(model, tok, ns.prompt, max_new_tokens=ns.max_new_tokens, device=dev)
    for prompt, out in zip(ns.prompt, outs, strict=True):
        print(f"{prompt}{out}")
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cognate-train`` console script and ``python -m cognate_train``."""
    from .trainer import TrainingStopped

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-") and args[0] not in ("-h", "--help"):
        args = ["train", *args]  # `cognate-train` alone runs `train` with the quick preset
    try:
        ns = build_parser().parse_args(args)
        handler = {"train": cmd_train, "grok": cmd_grok, "eval": cmd_eval, "generate": cmd_generate}
        return handler[ns.command](ns)
    except (ConfigError, CheckpointError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
