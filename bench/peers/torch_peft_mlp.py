#!/usr/bin/env python3
"""PyTorch + PEFT peer for bench/lora_bench: pretrain the MLP base
(784-512-512-10 GELU, AdamW 1e-3 cosine, batch 128) on Fashion-MNIST, then
train a PEFT LoRA (r=8, alpha=16, all-linear = both hidden layers) on a seeded
pixel permutation of it for the same epochs and learning rate as tessera.
Prints JSON lines: base accuracy, LoRA samples/s and accuracy, full
fine-tuning samples/s.
"""
import argparse, json, math, os, time

import numpy as np
import peft
import torch
import torch.nn as nn

from torch_mlp import load  # same data loading and standardisation


def train(model, params, xtr, ytr, epochs, lr, batch, g, max_seconds=0):
    opt = torch.optim.AdamW(params, lr=lr)
    n = xtr.shape[0]
    total = epochs * (n // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    lossf = nn.CrossEntropyLoss()
    seen, secs = 0, 0.0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        for s in range(0, n - batch + 1, batch):
            idx = perm[s:s + batch]
            opt.zero_grad(set_to_none=True)
            lossf(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            sched.step()
            seen += batch
            if max_seconds and secs + time.perf_counter() - t0 > max_seconds:
                break
        secs += time.perf_counter() - t0
        if max_seconds and secs >= max_seconds:
            break
    return seen / secs


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base-epochs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--perm-seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=0, help="cap each timed phase (thread probes)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, ytr = load(a.data_dir, "train", 0)
    xte, yte = load(a.data_dir, "test", 0)
    base = nn.Sequential(nn.Linear(784, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10))
    train(base, base.parameters(), xtr, ytr, a.base_epochs, 1e-3, 128, g, a.max_seconds)
    base_acc = accuracy(base, xte, yte)
    perm = torch.from_numpy(np.random.default_rng(a.perm_seed).permutation(784))
    ptr, pte = xtr[:, perm], xte[:, perm]
    state = {k: v.clone() for k, v in base.state_dict().items()}
    env = {"impl": "pytorch+peft", "torch": torch.__version__, "peft": peft.__version__, "threads": a.threads,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["0", "2"], lora_dropout=0.0)
    model = peft.get_peft_model(base, cfg)
    before = accuracy(model, pte, yte)
    rate = train(model, [p for p in model.parameters() if p.requires_grad], ptr, ytr, a.epochs, a.lr, 128, g,
                 a.max_seconds)
    print(json.dumps({**env, "phase": "lora", "base_accuracy": base_acc, "task_accuracy_before": before,
                      "samples_per_s": rate, "test_accuracy": accuracy(model, pte, yte),
                      "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}), flush=True)
    full = nn.Sequential(nn.Linear(784, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10))
    full.load_state_dict(state)
    rate = train(full, full.parameters(), ptr, ytr, 1, 1e-3, 128, g, a.max_seconds)
    print(json.dumps({**env, "phase": "full_finetune", "samples_per_s": rate}), flush=True)


if __name__ == "__main__":
    main()
