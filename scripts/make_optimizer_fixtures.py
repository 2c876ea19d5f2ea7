#!/usr/bin/env python3
# Makes Tests/TrainingTests/Fixtures/optimizers.json: three steps of torch.optim.AdamW and of
# torch.optim.SGD (momentum), each step after torch.nn.utils.clip_grad_norm_ at 1.0, on three
# parameters: "w" (4, 9) and "big" (2, 17003) with weight decay, "b" (13,) without (SwiftPEFT
# decays rank ≥ 2 only). "big" is large enough for the optimizers' split over the threads, and
# neither half of it (on 2 threads) is a multiple of 8, so the vector loops' scalar tails run too.
#
# Inputs are not stored: they are the project's RNG (Tensor.uniform(shape, low: -1, high: 1,
# rng: RNG(seed)), re-implemented bit-exactly in scripts/make_fixtures.py): parameter i starts from
# seed 100 + i; its gradient at step s (0-based) is seed 200 + 10·s + i, times GRAD_SCALES[s]
# (float32 products), so the global norm is above the clip at steps 0 and 2 and below it at step 1.
#
# Recorded: the global gradient norm of each step before clipping (float64, numpy), and after the
# last step every parameter and optimizer state ("exp_avg", "exp_avg_sq"; "momentum_buffer"),
# whole for "w" and "b", every STRIDE-th element and the last for "big" (with their indices).
#
# Re-run (needs torch and numpy; never a dependency of the Swift build):
#   .venv/bin/python scripts/make_optimizer_fixtures.py
# Read by Tests/TrainingTests/OptimizerTests.swift.

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import project_uniform  # noqa: E402  (the project's RNG, bit-exact)

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "Tests", "TrainingTests", "Fixtures", "optimizers.json")
SHAPES = [("w", (4, 9)), ("b", (13,)), ("big", (2, 17003))]
GRAD_SCALES = [np.float32(0.1), np.float32(0.005), np.float32(0.1)]
STEPS = len(GRAD_SCALES)
MAX_NORM = 1.0
STRIDE = 97
OPTIMIZERS = {
    "adamw": dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    "sgd": dict(lr=0.05, momentum=0.9, weight_decay=0.1),
}


def grads(step):
    return [project_uniform(shape, 200 + 10 * step + i) * GRAD_SCALES[step] for i, (_, shape) in enumerate(SHAPES)]


def floats(a):
    return [float(x) for x in np.asarray(a, dtype=np.float32).reshape(-1)]


def recorded(name, t):
    flat = t.detach().numpy().reshape(-1)
    if name != "big":
        return {"values": floats(flat)}
    idx = list(range(0, flat.size, STRIDE)) + [flat.size - 1]
    return {"indices": idx, "values": floats(flat[idx])}


def run(kind):
    params = [torch.nn.Parameter(torch.from_numpy(project_uniform(shape, 100 + i).copy()))
              for i, (_, shape) in enumerate(SHAPES)]
    settings = dict(OPTIMIZERS[kind])
    wd = settings.pop("weight_decay")
    groups = [{"params": [p for p, (_, s) in zip(params, SHAPES) if len(s) >= 2], "weight_decay": wd},
              {"params": [p for p, (_, s) in zip(params, SHAPES) if len(s) < 2], "weight_decay": 0.0}]
    opt = (torch.optim.AdamW(groups, foreach=False, **settings) if kind == "adamw"
           else torch.optim.SGD(groups, foreach=False, **settings))
    norms = []
    for step in range(STEPS):
        g = grads(step)
        norms.append(float(np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in g))))
        for p, x in zip(params, g):
            p.grad = torch.from_numpy(x.copy())
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=False)
        opt.step()
        opt.zero_grad()
    state = {}
    for p, (name, _) in zip(params, SHAPES):
        entry = {"param": recorded(name, p)}
        for key, value in opt.state[p].items():
            if key != "step":
                entry[key] = recorded(name, value)
        state[name] = entry
    flat = {k: v for k, v in OPTIMIZERS[kind].items() if k != "betas"}
    if "betas" in OPTIMIZERS[kind]:
        flat["beta1"], flat["beta2"] = OPTIMIZERS[kind]["betas"]
    return {"settings": flat, "norms": norms, "state": state}


def main():
    torch.use_deterministic_algorithms(True)
    out = {
        "about": "made by scripts/make_optimizer_fixtures.py; read by Tests/TrainingTests/OptimizerTests.swift",
        "torch_version": torch.__version__,
        "names": [name for name, _ in SHAPES],
        "shapes": {name: list(shape) for name, shape in SHAPES},
        "param_seeds": [100 + i for i in range(len(SHAPES))],
        "grad_seed": "200 + 10 * step + index",
        "grad_scales": [float(s) for s in GRAD_SCALES],
        "max_norm": MAX_NORM,
        "optimizers": {kind: run(kind) for kind in OPTIMIZERS},
    }
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w", encoding="ascii", newline="\n") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT_PATH)} ({os.path.getsize(OUT_PATH)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
