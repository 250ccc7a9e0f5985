#!/usr/bin/env python3
"""Produce the reference values burnish's tests compare against, by running PyTorch and
transformers themselves. CI never runs this: its small JSON outputs are committed.

    pip install torch transformers
    python3 tests/reference/generate.py          # rewrites tests/reference/fixtures/*.json

Every fixture records the versions that produced it. Gradients fed to the optimizer are
generated here and stored, so the Rust tests replay exactly the same inputs.
"""
import json
import math
import pathlib
import sys

import torch
import transformers
from transformers import optimization as hf_opt
from transformers.trainer_pt_utils import get_parameter_names

OUT = pathlib.Path(__file__).resolve().parent / "fixtures"
VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def write(name, payload):
    payload = {"generated_by": "tests/reference/generate.py", "versions": VERSIONS, **payload}
    path = OUT / name
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path.relative_to(OUT.parent.parent.parent)} ({path.stat().st_size} bytes)")


def f32_list(t):
    return [float(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


# ---------------------------------------------------------------- schedules
def schedules():
    cases = []

    def run(name, config, make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config["peak_lr"])
        sched = make(opt)
        lrs = []
        for _ in range(config["total_steps"] + 1):
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        cases.append({"name": name, "config": config, "lrs": lrs})

    def cfg(kind, peak, total, warmup, **extra):
        return {"kind": {"type": kind, **extra}, "peak_lr": peak, "total_steps": total,
                "warmup": warmup}

    for total, warmup in [(10, 3), (100, 0), (37, 5), (7, 7), (1, 0), (250, 15)]:
        w = {"steps": warmup}
        run(f"linear T={total} W={warmup}", cfg("linear", 5e-5, total, w),
            lambda o: hf_opt.get_linear_schedule_with_warmup(o, warmup, total))
        run(f"constant_with_warmup T={total} W={warmup}", cfg("constant_with_warmup", 1e-3, total, w),
            lambda o: hf_opt.get_constant_schedule_with_warmup(o, warmup))
        run(f"cosine T={total} W={warmup}", cfg("cosine", 2e-5, total, w),
            lambda o: hf_opt.get_cosine_schedule_with_warmup(o, warmup, total))
        run(f"inverse_sqrt T={total} W={warmup}", cfg("inverse_sqrt", 1e-4, total, w),
            lambda o: hf_opt.get_inverse_sqrt_schedule(o, warmup))
        if warmup < total:
            run(f"polynomial T={total} W={warmup}", cfg("polynomial", 1e-3, total, w),
                lambda o: hf_opt.get_polynomial_decay_schedule_with_warmup(o, warmup, total))
    run("constant", cfg("constant", 3e-4, 20, {"steps": 0}), hf_opt.get_constant_schedule)
    run("cosine min_lr_ratio", cfg("cosine", 1e-3, 60, {"steps": 6}, min_lr_ratio=0.1),
        lambda o: hf_opt.get_cosine_with_min_lr_schedule_with_warmup(o, 6, 60, min_lr_rate=0.1))
    run("cosine 1.5 cycles", cfg("cosine", 1e-3, 40, {"steps": 4}, num_cycles=1.5),
        lambda o: hf_opt.get_cosine_schedule_with_warmup(o, 4, 40, num_cycles=1.5))
    for cycles in [1, 3]:
        run(f"hard restarts c={cycles}",
            cfg("cosine_with_hard_restarts", 1e-3, 50, {"steps": 5}, num_cycles=cycles),
            lambda o: hf_opt.get_cosine_with_hard_restarts_schedule_with_warmup(o, 5, 50, num_cycles=cycles))
    run("polynomial power 2 lr_end 1e-5",
        cfg("polynomial", 1e-3, 30, {"steps": 3}, power=2.0, lr_end=1e-5),
        lambda o: hf_opt.get_polynomial_decay_schedule_with_warmup(o, 3, 30, lr_end=1e-5, power=2.0))
    run("inverse_sqrt timescale 7", cfg("inverse_sqrt", 1e-3, 40, {"steps": 3}, timescale=7),
        lambda o: hf_opt.get_inverse_sqrt_schedule(o, 3, timescale=7))
    ramps = ["linear", "cosine", "1-sqrt"]
    for wr in ramps:
        for dr in ramps:
            run(f"wsd warmup={wr} decay={dr}",
                cfg("warmup_stable_decay", 1e-3, 50, {"steps": 8}, decay={"steps": 12},
                    warmup_ramp=wr, decay_ramp=dr, min_lr_ratio=0.05),
                lambda o: hf_opt.get_wsd_schedule(o, 8, 12, num_training_steps=50, warmup_type=wr,
                                                  decay_type=dr, min_lr_ratio=0.05))
    # Warmup as a ratio, resolved the way TrainingArguments.get_warmup_steps does.
    for total, ratio in [(1000, 0.06), (333, 0.1), (7, 0.3)]:
        warm = math.ceil(total * ratio)
        run(f"linear ratio={ratio} T={total}", cfg("linear", 5e-5, total, {"ratio": ratio}),
            lambda o: hf_opt.get_linear_schedule_with_warmup(o, warm, total))
    write("schedules.json", {"cases": cases})


# ---------------------------------------------------------------- AdamW
class Tiny(torch.nn.Module):
    """Parameter names mirror the Rust test module: dense, norm (a LayerNorm), head."""

    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(4, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 3)


def adamw():
    steps = 50
    cases = []
    variants = [
        {"name": "hf groups, linear warmup/decay", "weight_decay": 0.1, "amsgrad": False,
         "head_lr_scale": 1.0, "betas": [0.9, 0.999], "eps": 1e-8},
        {"name": "amsgrad", "weight_decay": 0.01, "amsgrad": True, "head_lr_scale": 1.0,
         "betas": [0.9, 0.999], "eps": 1e-8},
        {"name": "head lr x10, other betas", "weight_decay": 0.05, "amsgrad": False,
         "head_lr_scale": 10.0, "betas": [0.8, 0.99], "eps": 1e-6},
    ]
    for v in variants:
        torch.manual_seed(0)
        model = Tiny()
        # LayerNorm starts at 1/0 in torch; perturb it so decay mistakes would show.
        with torch.no_grad():
            for p in model.norm.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        initial = {n: f32_list(p) for n, p in model.named_parameters()}
        shapes = {n: list(p.shape) for n, p in model.named_parameters()}
        decay = set(get_parameter_names(
            model, [torch.nn.LayerNorm],
            [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
        peak = 1e-2
        groups = []
        for n, p in model.named_parameters():
            scale = v["head_lr_scale"] if n == "head.weight" else 1.0
            groups.append({"params": [p], "lr": peak * scale,
                           "weight_decay": v["weight_decay"] if n in decay else 0.0})
        opt = torch.optim.AdamW(groups, lr=peak, betas=tuple(v["betas"]), eps=v["eps"],
                                weight_decay=v["weight_decay"], amsgrad=v["amsgrad"])
        sched = hf_opt.get_linear_schedule_with_warmup(opt, 5, steps)
        gen = torch.Generator().manual_seed(1234)
        grads, lrs, snapshots = [], [], {}
        for step in range(steps):
            lrs.append(sched.get_last_lr()[0])  # group 0 (dense.weight) has scale 1
            step_grads = {}
            for n, p in model.named_parameters():
                # head.bias gets no gradient every 7th step: torch skips it entirely then.
                if n == "head.bias" and step % 7 == 3:
                    p.grad = None
                    step_grads[n] = None
                    continue
                scale = 10.0 ** (((step * 7 + len(n)) % 5) - 2)
                g = torch.randn(p.shape, generator=gen) * scale
                p.grad = g.clone()
                step_grads[n] = f32_list(g)
            grads.append(step_grads)
            opt.step()
            sched.step()
            if step + 1 in (1, 10, 25, 50):
                snapshots[str(step + 1)] = {n: f32_list(p) for n, p in model.named_parameters()}
        state_steps = {n: int(opt.state[p]["step"]) for n, p in model.named_parameters()}
        cases.append({**v, "peak_lr": peak, "warmup": 5, "steps": steps, "shapes": shapes,
                      "decay_params": sorted(decay), "initial": initial, "grads": grads,
                      "lrs": lrs, "snapshots": snapshots, "state_steps": state_steps})
    write("adamw.json", {"cases": cases})


# ---------------------------------------------------------------- clipping
def clipping():
    gen = torch.Generator().manual_seed(7)
    shapes = [[5, 3], [3], [2, 2, 2], [1]]
    cases = []
    for scale in [0.01, 1.0, 30.0]:
        base = [torch.randn(s, generator=gen) * scale for s in shapes]
        for norm_type in [2.0, math.inf]:
            for max_norm in [1.0, 0.25, 1000.0]:
                params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
                for p, g in zip(params, base):
                    p.grad = g.clone()
                total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
                cases.append({"shapes": shapes, "norm_type": "inf" if math.isinf(norm_type) else "l2",
                              "max_norm": max_norm, "grads": [f32_list(g) for g in base],
                              "total_norm": float(total),
                              "clipped": [f32_list(p.grad) for p in params]})
    # A non-finite gradient: torch raises with error_if_nonfinite=True.
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, float("inf"), 2.0])
    try:
        torch.nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
        raised = False
    except RuntimeError:
        raised = True
    write("clip.json", {"cases": cases, "nonfinite_raises": raised})


# ---------------------------------------------------------------- GradScaler
def scaler():
    interval = 3
    param = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([param], lr=0.1)
    gs = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=interval)
    overflow = [False, True, False, False, False, False, True, True, False, False, False,
                False, False, False, True, False, False, False]
    scales, stepped = [], []
    for bad in overflow:
        opt.zero_grad()
        x = torch.tensor([1.0, 2.0, 3.0, float("inf") if bad else 4.0])
        loss = (param * x).sum()
        before = param.detach().clone()
        gs.scale(loss).backward()
        gs.step(opt)
        gs.update()
        stepped.append(not torch.equal(before, param.detach()))
        scales.append(gs.get_scale())
    write("scaler.json", {"init_scale": 2.0 ** 16, "growth_factor": 2.0, "backoff_factor": 0.5,
                          "growth_interval": interval, "overflow": overflow,
                          "scale_after": scales, "stepped": stepped})


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    schedules()
    adamw()
    clipping()
    scaler()
