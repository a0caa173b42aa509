#!/usr/bin/env python3
"""PyTorch peer for bench/decoder_bench: the same GPT-2 style byte-level decoder
(4 layers, d_model 256, 4 heads, context 128, vocab 256, tied embeddings,
LayerNorm, tanh-GELU, learned positions), batch 16, AdamW (lr 1e-3, decay 0.1 on
matrices), gradient clipping at 1.0, on the bytes of /usr/share/common-licenses.
Attention uses F.scaled_dot_product_attention (PyTorch's fastest CPU path).
Prints one JSON line: training tokens/s, forward-only tokens/s, peak RSS.
"""
import argparse, glob, json, math, os, resource, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V=256, T=128, d=256, L=4, h=4):
        super().__init__()
        self.wte = nn.Embedding(V, d)
        self.wpe = nn.Embedding(T, d)
        self.h = nn.ModuleList(Block(d, h) for _ in range(L))
        self.ln_f = nn.LayerNorm(d)
        # GPT-2 initialisation, as tessera's Decoder does.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif "ln" not in name:
                nn.init.zeros_(p)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.h:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--files", default="/usr/share/common-licenses/*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    data = np.concatenate([np.fromfile(f, dtype=np.uint8) for f in sorted(glob.glob(a.files)) if os.path.isfile(f)])
    data = torch.from_numpy(data.astype(np.int64))
    model = GPT(T=a.ctx)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def batch():
        ix = torch.randint(0, len(data) - a.ctx - 1, (a.batch,), generator=g)
        x = torch.stack([data[i:i + a.ctx] for i in ix])
        y = torch.stack([data[i + 1:i + a.ctx + 1] for i in ix])
        return x, y

    t0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            t0 = time.perf_counter()
        x, y = batch()
        loss = F.cross_entropy(model(x).view(-1, 256), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    train = a.steps * a.batch * a.ctx / (time.perf_counter() - t0)
    with torch.no_grad():
        for step in range(a.warmup + a.steps):
            if step == a.warmup:
                t0 = time.perf_counter()
            x, y = batch()
            F.cross_entropy(model(x).view(-1, 256), y.view(-1))
    fwd = a.steps * a.batch * a.ctx / (time.perf_counter() - t0)
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": a.threads,
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                      "params": sum(p.numel() for p in model.parameters()),
                      "train_tokens_per_s": train, "forward_tokens_per_s": fwd, "final_loss": loss.item(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


if __name__ == "__main__":
    main()
