"""``cognate-train eval`` and ``generate``: use a checkpoint that a run wrote.

A checkpoint is verified against its manifest before anything is loaded, and a file that does
not load (damaged JSON, a config or tokenizer that transformers rejects) is a one-line
:class:`ConfigError` naming the checkpoint, never a traceback.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .config import ConfigError


def load_checkpoint_dir(path: str) -> tuple[Path, dict[str, Any]]:
    """The verified checkpoint directory and its ``trainer_state.json``."""
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
    try:
        state = load_json(state_path)
        state["step"], state["config"]["seed"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"checkpoint: {state_path} is damaged (not a trainer state)") from None
    return d, state


def _load_hf(d: Path, device: str, trm_cycles: int | None = None):
    """Model, tokenizer and device of a checkpoint; ``trm_cycles``: refinement cycles to run at
    inference instead of the trained count (test-time depth; the model reads it each call)."""
    import cognate_model  # noqa: F401  (registers the model with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .runtime import resolve_device

    dev = resolve_device(device)
    try:
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d).to(dev).eval()
    except Exception as exc:  # json, tokenizers and transformers each raise their own kinds
        raise ConfigError(f"checkpoint: {d} does not load ({type(exc).__name__}: {exc})") from None
    if trm_cycles is not None:
        if trm_cycles < 1:
            raise ConfigError(f"trm-cycles: must be >= 1, got {trm_cycles}")
        if not hasattr(model.config, "trm_cycles"):
            raise ConfigError(f"trm-cycles: the model in {d} has no recursion")
        model.config.trm_cycles = trm_cycles
    return model, tok, dev


def _eval_grok(d: Path, ts: dict[str, Any]) -> dict[str, Any]:
    from .checkpoints import load_weights
    from .grok_data import modular_dataset, vocab_size
    from .grok_model import GrokDecoder, score

    cfg = ts["config"]
    model = GrokDecoder(vocab_size(cfg["p"]), cfg["d_model"], cfg["n_layers"], cfg["n_heads"])
    load_weights(model, d)
    train, val = modular_dataset(cfg["p"], cfg["op"], cfg["train_fraction"], cfg["seed"])
    result: dict[str, Any] = {"step": ts["step"]}
    result["train/loss"], result["train/accuracy"] = score(model, train)
    result["val/loss"], result["val/accuracy"] = score(model, val)
    return result


def _eval_curriculum(
    d: Path, ts: dict[str, Any], n_val: int | None, device: str, trm_cycles: int | None
):
    from .data import active_stages, families_for_stage, make_split
    from .evaluation import exact_match, val_loss

    cfg = ts["config"]
    if n_val is not None and not 1 <= n_val <= cfg["n_val"]:
        # the split's first n_val prompts per family are validation, the rest training: a
        # larger n_val would score examples the model was trained on
        raise ConfigError(
            f"n-val: must be in [1, {cfg['n_val']}] (the run's validation size), got {n_val}"
        )
    model, tok, dev = _load_hf(d, device, trm_cycles)
    families = families_for_stage(active_stages(cfg["stage_fractions"])[-1])
    _, val = make_split(
        families, cfg["n_train"], n_val or cfg["n_val"], cfg["seed"], cfg["max_len"]
    )
    bs = cfg["eval_batch_size"]
    result = {
        "step": ts["step"],
        "specialization": ts.get("name", ts.get("specialization")),
        "trm_cycles": getattr(model.config, "trm_cycles", None),
        "val/loss": val_loss(model, tok, val, bs, cfg["max_len"], dev),
    }
    em = exact_match(model, tok, val, bs, device=dev)
    result.update({f"val/{k}": v for k, v in em.items()})
    return result


def _eval_real(d: Path, ts: dict[str, Any], ns: argparse.Namespace) -> dict[str, Any]:
    """Per-dataset metrics on the held-out splits of ``--data`` (cognate_train.realdata)."""
    from .realdata.evaluate import evaluate_checkpoint
    from .realdata.setup import parse_data
    from .realdata.sources import DataError

    try:
        names = parse_data(ns.data)
    except ValueError as exc:
        raise ConfigError(str(exc).removeprefix("--")) from None
    if names == "curriculum":
        raise ConfigError("data: eval --data takes seeds or dataset names, got 'curriculum'")
    if names == "seeds":  # the six datasets of the seed curriculum
        from .realdata.sources import DATASET_NAMES

        names = DATASET_NAMES
    for flag in ("limit", "max_new_tokens", "batch_size"):
        value = getattr(ns, flag)
        if value is not None and value < 1:
            raise ConfigError(f"{flag.replace('_', '-')}: must be >= 1, got {value}")
    if ns.data_dir and not Path(ns.data_dir).is_dir():
        raise ConfigError(f"data-dir: {ns.data_dir} is not a directory")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, tok, dev = _load_hf(d, ns.device, ns.trm_cycles)
    try:
        datasets = evaluate_checkpoint(
            model,
            tok,
            names,
            data_dir=ns.data_dir,
            limit=ns.limit,
            execute_code=ns.execute_code,
            skip_bad_rows=ns.skip_bad_rows,
            batch_size=ns.batch_size,
            device=dev,
            max_new_tokens=ns.max_new_tokens,
        )
    except (DataError, ValueError) as exc:
        raise ConfigError(f"data: {exc}") from None
    return {"checkpoint": str(d), "step": ts["step"], "datasets": datasets}


def _print_real(result: dict[str, Any]) -> None:
    print(f"checkpoint {result['checkpoint']} (step {result['step']})")
    for name, m in result["datasets"].items():
        shown = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in m.items()
            if k != "seconds"
        )
        print(f"  {name:14s} {shown}")


def _threads(ns: argparse.Namespace, ts: dict[str, Any]):
    """``--threads`` (else the checkpoint run's own setting) for the rest of the command."""
    from .runtime import cpu_threads

    if ns.threads is not None and ns.threads < 0:
        raise ConfigError(f"threads: must be >= 0 (0: torch's default), got {ns.threads}")
    return cpu_threads(ns.threads if ns.threads is not None else ts["config"].get("threads", 0))


def cmd_eval(ns: argparse.Namespace) -> int:
    d, ts = load_checkpoint_dir(ns.checkpoint)
    with _threads(ns, ts):
        return _eval(ns, d, ts)


def _eval(ns: argparse.Namespace, d: Path, ts: dict[str, Any]) -> int:
    if ns.data:
        result = _eval_real(d, ts, ns)
        if ns.json:
            print(json.dumps(result, indent=1))
        else:
            _print_real(result)
        return 0
    if "p" in ts["config"]:  # a grok checkpoint
        if ns.trm_cycles is not None:
            raise ConfigError("trm-cycles: a grok checkpoint has no recursion")
        result = _eval_grok(d, ts)
    else:
        result = _eval_curriculum(d, ts, ns.n_val, ns.device, ns.trm_cycles)
    if ns.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"checkpoint {d} (step {result['step']})")
    for k, v in result.items():
        if k != "step":
            print(f"  {k:32s} {v:.4f}" if isinstance(v, float) else f"  {k:32s} {v}")
    return 0


def cmd_generate(ns: argparse.Namespace) -> int:
    from .evaluation import generate_answers

    if ns.max_new_tokens < 1:
        raise ConfigError(f"max-new-tokens: must be >= 1, got {ns.max_new_tokens}")
    d, ts = load_checkpoint_dir(ns.checkpoint)
    if "p" in ts["config"]:
        raise ConfigError("checkpoint: generate needs a train checkpoint, not a grok one")
    with _threads(ns, ts):
        model, tok, dev = _load_hf(d, ns.device, ns.trm_cycles)
        try:
            outs = generate_answers(
                model, tok, ns.prompt, max_new_tokens=ns.max_new_tokens, device=dev
            )
        except ValueError as exc:  # the model refuses a prompt longer than its max_seq_len
            raise ConfigError(f"prompt: {exc}; use a shorter --prompt") from None
    for prompt, out in zip(ns.prompt, outs, strict=True):
        print(format_generation(prompt, out))
    return 0


def format_generation(prompt: str, completion: str) -> str:
    """One printed line per prompt: both quoted as JSON strings (so a completion that starts
    with a space or holds a newline stays visible), the completion after `` -> ``."""
    return (
        f"{json.dumps(prompt, ensure_ascii=False)} -> {json.dumps(completion, ensure_ascii=False)}"
    )
