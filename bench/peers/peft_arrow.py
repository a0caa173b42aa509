#!/usr/bin/env python3
"""PEFT peer for bench/arrow_bench: PEFT's own Arrow layer
(peft.tuners.lora.arrow.ArrowLoraLinearLayer) on the experts, inputs and
prototypes the bench wrote (--data FILE.safetensors). Prints one JSON line:
tokens/s of its forward (routing + mixture, best of several timed runs),
the largest difference of its routing weights and its output from
tessera's (written beside the inputs), the agreement of its own 15-step
power-iteration prototypes with tessera's exact ones (min |cos|), and the
growth of peak RSS during its forward (its einsums hold [tokens, E, out]).
"""
import argparse, json, resource

import torch
from peft import ArrowConfig
from peft.tuners.lora.arrow import ArrowLoraLinearLayer
from safetensors.torch import load_file

from timing import best_time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t = load_file(a.data)
    x, A, B, scales = t["x"], t["A"], t["B"], t["scales"]
    E, r, d_in = A.shape
    d_out = B.shape[1]
    k = int(t["top_k"].item())
    cfg = ArrowConfig(top_k=k, router_temperature=1.0, rng_seed=0)
    cfg.task_adapter_names = [f"task_{e}" for e in range(E)]
    cfg.gks_adapter_names = []
    layer = ArrowLoraLinearLayer(d_in, cfg)
    lora_A, lora_B, scaling = torch.nn.ModuleDict(), torch.nn.ModuleDict(), {}
    for e in range(E):
        la, lb = torch.nn.Linear(d_in, r, bias=False), torch.nn.Linear(r, d_out, bias=False)
        la.weight.data.copy_(A[e])
        lb.weight.data.copy_(B[e])
        lora_A[f"task_{e}"], lora_B[f"task_{e}"] = la, lb
        scaling[f"task_{e}"] = float(scales[e])
    with torch.no_grad():
        layer.build_prototypes(lora_A, lora_B)
        own = layer.prototypes.clone()
        cos = torch.abs((own / own.norm(dim=1, keepdim=True)) * t["prototypes"]).sum(1)
        layer.prototypes = t["prototypes"].clone()  # the same prototypes: like for like
        xs = x.view(1, -1, d_in)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        delta = layer.forward(xs, lora_A, lora_B, torch.nn.Identity(), scaling).view(-1, d_out)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sec = best_time(
            lambda: layer.forward(xs, lora_A, lora_B, torch.nn.Identity(), scaling), 5, 0.2)
        sim = torch.abs(x @ layer.prototypes.T)
        top_v, idx = torch.topk(sim, k, dim=1)
        full = x.new_full(sim.shape, float("-inf"))
        full.scatter_(1, idx, top_v)
        coeff = torch.softmax(full, dim=1)
    print(json.dumps({
        "impl": "peft", "experts": E, "tokens": x.shape[0], "threads": a.threads,
        "tokens_per_s": x.shape[0] / sec, "samples_per_s": x.shape[0] / sec,
        "max_abs_diff_output": float((delta - t["delta"]).abs().max()),
        "max_abs_diff_weights": float((coeff - t["coeff"]).abs().max()),
        "min_abs_cos_power_iteration_vs_exact": float(cos.min()),
        "forward_peak_rss_growth_mb": (rss1 - rss0) / 1024.0,
        "torch": torch.__version__}))


if __name__ == "__main__":
    main()
