#!/usr/bin/env python3
"""PEFT peer for bench/router_speed_bench: Poly (peft.PolyConfig, poly_type
"poly") training speed on tessera's MLP shape (784-512-512-10 GELU, Poly on
both hidden Linears: r 8, skills 8, splits 4, 10 tasks), AdamW lr 3e-3,
batch 128 of random inputs with random task ids (the compute does not depend
on the data). PEFT's Poly needs inputs [batch, seq, in]: seq 1. With
--mhr-z only the routing logits train. Prints one JSON line: samples/s over
--steps steps after --warmup.
"""
import argparse, json, time

import torch
import torch.nn as nn
from peft import PolyConfig, get_peft_model


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 512)
        self.fc2 = nn.Linear(512, 512)
        self.head = nn.Linear(512, 10)

    def forward(self, x):
        return self.head(nn.functional.gelu(self.fc2(nn.functional.gelu(self.fc1(x)))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--mhr-z", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = PolyConfig(task_type=None, r=8, n_tasks=10, n_skills=8, n_splits=4, target_modules=["fc1", "fc2"])
    model = get_peft_model(Mlp(), cfg)
    params = [p for n, p in model.named_parameters() if p.requires_grad and (not a.mhr_z or "module_logits" in n)]
    if a.mhr_z:
        for n, p in model.named_parameters():
            p.requires_grad_("module_logits" in n)
    model.train()
    opt = torch.optim.AdamW(params, lr=3e-3)
    lossf = nn.CrossEntropyLoss()
    x = torch.randn(a.batch, 1, 784)
    y = torch.randint(0, 10, (a.batch,))
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            t0 = time.perf_counter()
        task_ids = torch.randint(0, 10, (a.batch,))
        opt.zero_grad(set_to_none=True)
        out = model.base_model(x, task_ids=task_ids).reshape(a.batch, 10)
        lossf(out, y).backward()
        opt.step()
    secs = time.perf_counter() - t0
    print(json.dumps({"impl": "peft", "router": "mhr-z" if a.mhr_z else "poly",
                      "samples_per_s": a.steps * a.batch / secs, "threads": a.threads}))


if __name__ == "__main__":
    main()
