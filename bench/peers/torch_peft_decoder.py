#!/usr/bin/env python3
"""PyTorch + PEFT peer for bench/decoder_lora_bench: the GPT-2 style byte
decoder of torch_decoder.py loaded with tessera's base weights (the exported
Hugging Face folder: Conv1D [in, out] weights transposed into nn.Linear),
PEFT LoRA r=8 / alpha 16 on c_attn, c_proj, c_fc and the MLP projection,
AdamW lr 2e-3 (decay 0.1), clipping at 1.0, batch 16 x 128 on the bytes of
--files. Prints JSON lines: LoRA training tokens/s, and validation loss on
the held-out last 10% of the headers and of the prose before and after.
"""
import argparse, glob, json, os, time

import numpy as np
import peft
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from torch_decoder import GPT


def corpus(pattern):
    data = np.concatenate([np.fromfile(f, dtype=np.uint8) for f in sorted(glob.glob(pattern)) if os.path.isfile(f)])
    data = torch.from_numpy(data.astype(np.int64))
    h = int(len(data) * 0.1)
    return data[:-h], data[-h:]


def load_base(model, folder):
    w = load_file(os.path.join(folder, "model.safetensors"))
    sd = {"wte.weight": w["transformer.wte.weight"], "wpe.weight": w["transformer.wpe.weight"],
          "ln_f.weight": w["transformer.ln_f.weight"], "ln_f.bias": w["transformer.ln_f.bias"]}
    for i in range(len(model.h)):
        p = f"transformer.h.{i}."
        for ours, theirs in [("ln_1", "ln_1"), ("ln_2", "ln_2")]:
            sd[f"h.{i}.{ours}.weight"] = w[p + theirs + ".weight"]
            sd[f"h.{i}.{ours}.bias"] = w[p + theirs + ".bias"]
        for ours, theirs in [("c_attn", "attn.c_attn"), ("c_proj", "attn.c_proj"),
                             ("c_fc", "mlp.c_fc"), ("mlp_proj", "mlp.c_proj")]:
            sd[f"h.{i}.{ours}.weight"] = w[p + theirs + ".weight"].T.contiguous()  # Conv1D → Linear
            sd[f"h.{i}.{ours}.bias"] = w[p + theirs + ".bias"]
    model.load_state_dict(sd)


def val_loss(model, data, batches, batch=16, T=128):
    n = (len(data) - 1) // T
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for b in range(min(batches, n // batch)):
            ix = [(b * batch + j) * T for j in range(batch)]
            x = torch.stack([data[i:i + T] for i in ix])
            y = torch.stack([data[i + 1:i + T + 1] for i in ix])
            tot += F.cross_entropy(model(x).view(-1, 256), y.view(-1)).item()
            cnt += 1
    return tot / max(cnt, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--files", default="/usr/include/*.h")
    ap.add_argument("--prose", default="/usr/share/common-licenses/*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--no-eval", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    train, val = corpus(a.files)
    _, prose_val = corpus(a.prose)
    model = GPT()
    load_base(model, a.base)
    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                          target_modules=["c_attn", "c_proj", "c_fc", "mlp_proj"])
    model = peft.get_peft_model(model, cfg)
    out = {"impl": "pytorch+peft", "phase": "lora",
           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if not a.no_eval:
        out["headers_val_loss_before"] = val_loss(model, val, a.eval_batches)
        out["prose_val_loss_before"] = val_loss(model, prose_val, a.eval_batches)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    t0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            t0 = time.perf_counter()
        ix = torch.randint(0, len(train) - 129, (16,), generator=g)
        x = torch.stack([train[i:i + 128] for i in ix])
        y = torch.stack([train[i + 1:i + 129] for i in ix])
        loss = F.cross_entropy(model(x).view(-1, 256), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    tps = a.steps * 16 * 128 / (time.perf_counter() - t0)
    out["tokens_per_s"] = tps
    out["samples_per_s"] = tps  # for bench::best_peer_setting
    out["threads"] = a.threads
    if not a.no_eval:
        out["headers_val_loss_after"] = val_loss(model, val, a.eval_batches)
        out["prose_val_loss_after"] = val_loss(model, prose_val, a.eval_batches)
    out["torch"] = torch.__version__
    out["peft"] = peft.__version__
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
