"""The ``act/*`` and ``ltm/*`` values a training step reports are what their names say,
recomputed here from the model's own halting probabilities and gates by plain loops: the mean
over the step's micro-batches of per-micro-batch means over real (non-padding) tokens."""

from __future__ import annotations

import pytest
import torch
from cognate_model.memory import LongTermMemory, MAGGate
from cognate_model.titans import MemoryGate
from cognate_train import engine as engine_mod
from cognate_train.config import build_config
from cognate_train.trainer import CurriculumTask


def _first_halt(p: torch.Tensor, threshold: float) -> torch.Tensor:
    """(C, B, T) halting probabilities -> (B, T) first cycle c (1-based) with p_c > threshold,
    C if none: the cycle ACT stops a token at."""
    steps = torch.full(p.shape[1:], p.shape[0])
    for c in reversed(range(p.shape[0])):
        steps = torch.where(p[c] > threshold, torch.tensor(c + 1), steps)
    return steps


def _expected_cycles(p: torch.Tensor) -> torch.Tensor:
    """E[cycles] = sum_c P(still running at c) under the halting probabilities (Graves' ponder
    cost without the remainder): 1 + (1-p1) + (1-p1)(1-p2) + ..."""
    running, total = torch.ones_like(p[0]), torch.zeros_like(p[0])
    for c in range(p.shape[0]):
        total = total + running
        running = running * (1 - p[c])
    return total


def _step_with_hooks(tmp_path, spec: str):
    cfg = build_config("train", "smoke", None, {"max_steps": 2, "grad_accum": 2})
    task = CurriculumTask(cfg, spec, torch.device("cpu"))
    head = task.model.recursion.act_head.proj  # halting spread around the threshold
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0)
        head.bias.fill_(torch.logit(torch.tensor(task.model.config.act_threshold)).item())
    eng = engine_mod.Engine(task, cfg, tmp_path, log=lambda m: None)
    seen: dict[str, list] = {"out": [], "gate": [], "memory": []}
    model = task.model
    handles = [
        model.register_forward_hook(
            lambda m, a, kw, o: seen["out"].append((kw["attention_mask"].bool(), o)),
            with_kwargs=True,
        )
    ]
    for mod in model.modules():
        if isinstance(mod, MAGGate):  # ema: out = g y + (1 - g) M
            handles.append(mod.register_forward_hook(lambda m, a, o: seen["gate"].append(o[1])))
        if isinstance(mod, LongTermMemory):  # ema: (M, m, final state)
            handles.append(mod.register_forward_hook(lambda m, a, o: seen["memory"].append(o[1])))
        if isinstance(mod, MemoryGate):  # titans: out = y * gate
            handles.append(
                mod.register_forward_hook(lambda m, a, o: seen["gate"].append(o[2]["gate"]))
            )
    result = eng.train_step(task.batches(0))
    for h in handles:
        h.remove()
    return result, seen, model.config


def _mean_over_micro_batches(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("spec", ["reasoning", "memory"])
def test_act_and_ltm_metrics_are_what_they_say(tmp_path, spec, single_thread):
    result, seen, config = _step_with_hooks(tmp_path, spec)
    assert len(seen["out"]) == 2  # grad_accum 2
    want: dict[str, list[float]] = {}
    for i, (real, out) in enumerate(seen["out"]):
        p = out.halt_probs.double()
        steps = _first_halt(p, config.act_threshold)[real].double()
        per_mb = {
            "act/steps_mean": steps.mean(),
            "act/steps_std": steps.std(unbiased=False),
            "act/ponder_cost": _expected_cycles(p)[real].mean(),
            "act/halt_prob_mean": p[:, real].mean(),
        }
        gate = seen["gate"][i].detach().double()
        per_mb["ltm/gate_mean"] = gate[real].mean()
        if config.ltm_type == "ema":
            per_mb["ltm/usage"] = 1 - gate[real].mean()  # the memory path's blend weight
            memory = seen["memory"][i].detach().double()
            per_mb["ltm/memory_norm"] = memory.norm(dim=-1)[real].mean()
        for k, v in per_mb.items():
            want.setdefault(k, []).append(float(v))
    for key, values in want.items():
        assert result[key] == pytest.approx(_mean_over_micro_batches(values), rel=1e-5), key
    assert ("ltm/usage" in result) == (config.ltm_type == "ema")
    assert 1 < result["act/steps_mean"] < config.trm_cycles  # tokens halt at different cycles


def test_report_names_the_halting_cycle_as_a_training_figure(smoke_run):
    """summary act_cycles_mean: the mean of the last 5 logged act/steps_mean (training
    windows); the report labels it as such, not as cycles run at evaluation."""
    import json

    from cognate_train.metrics import read_metrics

    act = [
        r["act/steps_mean"]
        for r in read_metrics(smoke_run / "metrics.jsonl")
        if "act/steps_mean" in r
    ]
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["act_cycles_mean"] == pytest.approx(sum(act[-5:]) / 5)
    report = (smoke_run / "report.md").read_text()
    assert "ACT halting cycle (train)" in report and "avg ACT cycles" not in report
