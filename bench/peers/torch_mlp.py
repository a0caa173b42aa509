#!/usr/bin/env python3
"""PyTorch peer for bench/mlp_bench: the same MLP (784-512-512-10, GELU), the
same data (Fashion-MNIST IDX from dataset-fashion-mnist, standardised with
mean 0.2860 / std 0.3530), AdamW lr 1e-3 (torch defaults otherwise) with cosine decay to 0 over the run
(per batch, as tessera's schedule), batch 128, seeded shuffling. Prints one JSON line per evaluation point.

Run from a virtualenv with PyPI's torch; tessera never depends on it.
"""
import argparse, gzip, json, math, os, struct, sys, time, resource

import numpy as np
import torch
import torch.nn as nn


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    nd = data[3]
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def load(dir_, split, limit):
    stem = "train" if split == "train" else "t10k"
    x = read_idx(f"{dir_}/{stem}-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32)
    y = read_idx(f"{dir_}/{stem}-labels-idx1-ubyte.gz").astype(np.int64)
    if limit:
        x, y = x[:limit], y[:limit]
    x = (x / 255.0 - 0.2860) / 0.3530
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=str, default="5,15", help="evaluate after these epochs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--limit-train", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=0, help="stop training after this long")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                    help="cosine: lr decays to 0 over all epochs, stepped per batch (as tessera's)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr = load(a.data_dir, "train", a.limit_train)
    xte, yte = load(a.data_dir, "test", 0)
    model = nn.Sequential(nn.Linear(784, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    lossf = nn.CrossEntropyLoss()
    points = sorted(int(e) for e in a.epochs.split(","))
    g = torch.Generator().manual_seed(a.seed)
    n = xtr.shape[0]
    total = points[-1] * (n // a.batch)
    sched = None
    if a.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    train_time, seen = 0.0, 0
    for epoch in range(1, points[-1] + 1):
        perm = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        model.train()
        for s in range(0, n - a.batch + 1, a.batch):
            idx = perm[s:s + a.batch]
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            if sched:
                sched.step()
            seen += a.batch
            if a.max_seconds and train_time + time.perf_counter() - t0 > a.max_seconds:
                break
        train_time += time.perf_counter() - t0
        stop = a.max_seconds and train_time >= a.max_seconds
        if epoch in points or stop:
            model.eval()
            with torch.no_grad():
                acc = (model(xte).argmax(1) == yte).float().mean().item()
            print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": a.threads,
                              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                              "epoch": epoch, "samples_per_s": seen / train_time,
                              "test_accuracy": acc, "train_seconds": train_time,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
                  flush=True)
        if stop:
            break


if __name__ == "__main__":
    main()
