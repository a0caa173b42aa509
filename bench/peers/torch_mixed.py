#!/usr/bin/env python3
"""PyTorch / PEFT peer for bench/mixed_bench: a base Linear dim x dim, N LoRA
adapters of one rank, rows routed to random adapters, inference. Rows/s of
the base GEMM alone, one adapter for all rows, PEFT's mixed batch
(forward(adapter_names=...)), a plain loop over adapters, and gather + bmm.
Prints JSON lines.
"""
import argparse, json

import peft
import torch
import torch.nn as nn

from timing import best_time


class Base(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        return self.proj(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--adapters", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    d, r, E, N = a.dim, a.rank, a.adapters, a.rows
    x = torch.randn(N, d)
    ids = torch.randint(0, E, (N,))
    A = torch.randn(E, r, d) * 0.03
    B = torch.randn(E, d, r) * 0.03
    s = 2.0

    def row(impl, secs):
        print(json.dumps({"impl": impl, "rows": N, "adapters": E, "rank": r,
                          "threads": a.threads, "rows_per_s": N / secs, "ms": secs * 1e3}), flush=True)

    model = Base(d).eval()
    with torch.inference_mode():
        row("pytorch_base", best_time(lambda: model(x), 7, 0.05))
        W, b = model.proj.weight, model.proj.bias
        row("pytorch_single", best_time(lambda: model(x) + s * ((x @ A[0].T) @ B[0].T), 7, 0.05))

        def loop():
            y = model(x)
            for e in range(E):
                m = ids == e
                if m.any():
                    xe = x[m]
                    y[m] += s * ((xe @ A[e].T) @ B[e].T)
            return y
        row("pytorch_loop", best_time(loop, 7, 0.05))

        def gather_bmm():
            y = model(x)
            h = torch.bmm(A[ids], x.unsqueeze(2))          # [N, r, 1]
            return y + s * torch.bmm(B[ids], h).squeeze(2)  # [N, d]
        row("pytorch_gather_bmm", best_time(gather_bmm, 7, 0.05))

    # PEFT's own mixed batch: E named adapters, forward(adapter_names=...).
    cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"], lora_dropout=0.0)
    pm = peft.get_peft_model(Base(d), cfg, adapter_name="a0")
    for e in range(1, E):
        pm.add_adapter(f"a{e}", cfg)
    with torch.no_grad():
        for e in range(E):
            pm.base_model.model.proj.lora_A[f"a{e}"].weight.copy_(A[e])
            pm.base_model.model.proj.lora_B[f"a{e}"].weight.copy_(B[e])
    pm.eval()
    names = [f"a{int(e)}" for e in ids]
    with torch.inference_mode():
        row("peft_mixed_batch", best_time(lambda: pm(x, adapter_names=names), 7, 0.05))
        pm.set_adapter("a0")
        row("peft_single", best_time(lambda: pm(x), 7, 0.05))


if __name__ == "__main__":
    main()
