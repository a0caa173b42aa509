#!/usr/bin/env python3
"""Generates tests/fixtures/arrow/ for tests/routing/arrow_peft_test.cc with
PEFT's own Arrow layer (peft.tuners.lora.arrow.ArrowLoraLinearLayer: its
prototypes by 15 power steps, |x·p| scores, top-k, softmax over the k with a
temperature, per-adapter scaling, merge-after). The experts are built
well-conditioned (σ₂/σ₁ = 0.4: PEFT's 15 power steps converge to float
precision, so its prototypes equal the exact ones up to sign), each with its
own lora_alpha, so a wrong scale, a normalised input, a softmax over all E or
a missing |·| moves the output far past the test's tolerance.

One file per case, <case>.safetensors:
  x [T, in]; lora_A.<e> [r, in]; lora_B.<e> [out, r]; scaling [E] (the task
  experts as given, before any GenKnowSub); general.lora_A.<g>,
  general.lora_B.<g> (the "gks" case: PEFT's GenKnowSub subtracts their mean
  A and mean B from every task expert before the prototypes);
  prototypes [E, in] (PEFT's); coeff [T, E] (its routing weights);
  delta [T, out] (its layer output, dropout off); top_k, temperature [1].

  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch peft safetensors
  /tmp/venv/bin/python scripts/gen_arrow_fixture.py
"""
import os

import torch
from peft import ArrowConfig
from peft.tuners.lora.arrow import ArrowLoraLinearLayer
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "arrow")
IN, OUT, R, E, TOK = 64, 48, 8, 6, 40


def expert(gen, alpha):
    # B·A = U diag(σ) Vᵀ behind a random invertible G, σ₂/σ₁ = 0.4.
    U, _ = torch.linalg.qr(torch.randn(OUT, R, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(IN, R, generator=gen, dtype=torch.float64))
    sigma = torch.tensor([2.0] + [0.8 * 0.85**i for i in range(R - 1)], dtype=torch.float64)
    G = torch.eye(R, dtype=torch.float64) * 1.5 + 0.3 * torch.randn(R, R, generator=gen,
                                                                      dtype=torch.float64)
    A = G @ V.T
    B = U @ torch.diag(sigma) @ torch.linalg.inv(G)
    return A.float(), B.float(), alpha / R


def case(name, seed, top_k, temperature, general=0):
    gen = torch.Generator().manual_seed(seed)
    experts = [expert(gen, alpha) for alpha in (16.0, 8.0, 32.0, 4.0, 16.0, 12.0)]
    generals = [expert(gen, 16.0) for _ in range(general)]
    # Small general experts: task experts stay well-conditioned after the subtraction.
    generals = [(0.1 * A, 0.1 * B, s) for A, B, s in generals]
    cfg = ArrowConfig(top_k=top_k, router_temperature=temperature, rng_seed=seed,
                      use_gks=general > 0)
    cfg.task_adapter_names = [f"task_{e}" for e in range(E)]
    cfg.gks_adapter_names = [f"gks_{g}" for g in range(general)]
    layer = ArrowLoraLinearLayer(IN, cfg)
    lora_A, lora_B, scaling = torch.nn.ModuleDict(), torch.nn.ModuleDict(), {}

    def add(name, A, B):  # one adapter's factors as PEFT's lora_A / lora_B layers
        lora_A[name] = torch.nn.Linear(IN, R, bias=False)
        lora_B[name] = torch.nn.Linear(R, OUT, bias=False)
        lora_A[name].weight.data.copy_(A)
        lora_B[name].weight.data.copy_(B)

    for e, (A, B, s) in enumerate(experts):
        add(f"task_{e}", A, B)
        scaling[f"task_{e}"] = s
    for g, (A, B, _) in enumerate(generals):
        add(f"gks_{g}", A, B)
    layer.gen_know_sub(lora_A, lora_B)  # in place on the task experts, as PEFT does
    layer.build_prototypes(lora_A, lora_B)
    # Tokens near the experts' top directions, mixed, plus noise: routing varies.
    P = layer.prototypes
    x = 3.0 * torch.randn(TOK, E, generator=gen) @ P + 0.5 * torch.randn(TOK, IN, generator=gen)
    with torch.no_grad():
        delta = layer.forward(x.view(2, TOK // 2, IN), lora_A, lora_B, torch.nn.Identity(),
                              scaling).reshape(TOK, OUT)
        sim = torch.abs(x @ P.T)
        top_v, idx = torch.topk(sim, top_k, dim=1)
        full = x.new_full((TOK, E), float("-inf"))
        full.scatter_(1, idx, top_v)
        coeff = torch.softmax(full / temperature, dim=1)
    t = {"x": x.contiguous(), "prototypes": P.contiguous(), "coeff": coeff.contiguous(),
         "delta": delta.contiguous(),
         "scaling": torch.tensor([s for _, _, s in experts], dtype=torch.float32),
         "top_k": torch.tensor([float(top_k)]), "temperature": torch.tensor([temperature])}
    for e, (A, B, _) in enumerate(experts):
        t[f"lora_A.{e}"] = A.contiguous()
        t[f"lora_B.{e}"] = B.contiguous()
    for g, (A, B, _) in enumerate(generals):
        t[f"general.lora_A.{g}"] = A.contiguous()
        t[f"general.lora_B.{g}"] = B.contiguous()
    save_file(t, os.path.join(ROOT, name + ".safetensors"))
    print(name, "delta norm", float(delta.norm()), "coeff rows sum", float(coeff.sum(1).mean()))


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    case("k3_t1", 1, 3, 1.0)   # PEFT's defaults
    case("k2_t05", 2, 2, 0.5)
    case("gks_k3_t1", 3, 3, 1.0, general=2)
