"""Two gloo ranks stepping MuGrokfast / Muon with distributed=True (run by test_distributed.py).

``python dist_worker.py OUT``: forks 2 processes; rank r draws its own gradients (seed 100 + r),
averages them with all_reduce (what DDP does), steps, and saves its parameters, optimizer state,
and how many Newton-Schulz calls it ran to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mugrokfast.muon as muon_mod
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mugrokfast import MuGrokfast, Muon

WORLD = 2
STEPS = 3
# three (16, 8) matrices (one round of 2 + a leftover), and shapes that appear once
SHAPES = [(16, 8), (16, 8), (16, 8), (8, 16), (12, 4, 3), (5, 7), (0, 4), (7,)]


def make_params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]


def local_grads(rank: int, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 * (step + 1) + rank)
    return [torch.randn(s, generator=g) for s in SHAPES]


def make_optimizers(params_a, params_b, distributed):
    mgf = MuGrokfast(
        [{"params": params_a[:-1], "use_muon": True}, {"params": params_a[-1:], "use_muon": False}],
        grokfast="dual",
        grokfast_window=2,
        ns_dtype=torch.float32,
        distributed=distributed,
    )
    muon = Muon(params_b[:-2], lr=0.05, ns_dtype=torch.float32, distributed=distributed)
    return mgf, muon


def make_update_optimizer(params, distributed):
    """The EMA on the orthogonalised update (filtered after the all_gather, on every rank)."""
    return MuGrokfast(
        [{"params": params[:-1], "use_muon": True}, {"params": params[-1:], "use_muon": False}],
        grokfast="ema",
        grokfast_place="update",
        grokfast_lambda=0.5,
        grokfast_warmup_steps=1,
        ns_dtype=torch.float32,
        distributed=distributed,
    )


def _worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=WORLD
    )
    calls = [0]
    real_ns = muon_mod.newtonschulz_

    def counting_ns(*args, **kwargs):
        calls[0] += 1
        return real_ns(*args, **kwargs)

    muon_mod.newtonschulz_ = counting_ns
    params_a, params_b, params_c = make_params(), make_params(), make_params()
    mgf, muon = make_optimizers(params_a, params_b, distributed=True)
    upd = make_update_optimizer(params_c, distributed=True)
    for step in range(STEPS):
        grads = local_grads(rank, step)
        for g in grads:  # DDP's average
            dist.all_reduce(g)
            g.div_(WORLD)
        for p, g in zip(params_a, grads, strict=True):
            p.grad = g.clone()
        for p, g in zip(params_b[:-2], grads[:-2], strict=True):
            p.grad = g.clone()
        for p, g in zip(params_c, grads, strict=True):
            p.grad = g.clone()
        mgf.step()
        muon.step()
        upd.step()
    result = {
        "params_a": [p.detach() for p in params_a],
        "params_b": [p.detach() for p in params_b],
        "params_c": [p.detach() for p in params_c],
        "state_a": mgf.state_dict(),
        "state_b": muon.state_dict(),
        "state_c": upd.state_dict(),
        "ns_calls": calls[0],
        **_dtensor_checks(),
    }
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _dtensor_checks() -> dict:
    """FSDP2-style DTensor parameters (sharded over the 2 ranks): the errors MuGrokfast (split
    work) and Muon (local) raise for a Muon matrix, and an AdamW group's update of a DTensor
    next to the same update of a plain tensor (the full matrix, gathered afterwards)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(7)
    w0, g0 = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)

    def sharded(t):
        return distribute_tensor(t.clone(), mesh, [Shard(0)])

    errors = []
    for make in (
        lambda w: MuGrokfast([{"params": [w], "use_muon": True}], grokfast=None, distributed=True),
        lambda w: Muon([w]),
    ):
        w = torch.nn.Parameter(sharded(w0))
        opt, w.grad = make(w), sharded(g0)
        try:
            opt.step()
            errors.append("")
        except ValueError as e:
            errors.append(str(e))
    w, ref = torch.nn.Parameter(sharded(w0)), torch.nn.Parameter(w0.clone())
    opts = [MuGrokfast([{"params": [p], "use_muon": False}], grokfast="ema") for p in (w, ref)]
    for _ in range(2):
        w.grad, ref.grad = sharded(g0), g0.clone()
        for opt in opts:
            opt.step()
    return {
        "dtensor_error": errors[0],
        "dtensor_error_muon": errors[1],
        "dtensor_adamw": (w.full_tensor().detach(), ref.detach()),
    }


if __name__ == "__main__":
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    # fork: the ranks share this process's imported torch instead of importing it again
    mp.start_processes(_worker, args=(sys.argv[1],), nprocs=WORLD, start_method="fork")
