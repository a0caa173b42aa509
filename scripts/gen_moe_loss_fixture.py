#!/usr/bin/env python3
"""Generates tests/fixtures/moe/ for tests/runtime/kernels/gate_test.cc with the
real `transformers`: Mixtral's load_balancing_loss_func (two layers' gate
logits, top-2 of 6 experts, with and without an attention mask) and
SwitchTransformers' router_z_loss_func, each with its gradient with respect
to the logits by autograd. Logits have real spread (N(0, 1.5)) so that the
top-k sets differ from token to token.

<case>.safetensors: logits [L*B*T, E] (the layers' rows one after another,
as the loss concatenates them), mask [L*B*T] (the attention mask repeated
per layer; all ones without one), k, loss [1], grad [L*B*T, E],
z_loss [1], z_grad [L*B*T, E].

  /tmp/venv/bin/python scripts/gen_moe_loss_fixture.py
"""
import os

import torch
from safetensors.torch import save_file
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.models.switch_transformers.modeling_switch_transformers import router_z_loss_func

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "moe")
L, B, T, E, K = 2, 3, 5, 6, 2


def case(name, seed, masked):
    gen = torch.Generator().manual_seed(seed)
    layers = [(1.5 * torch.randn(B * T, E, generator=gen, dtype=torch.float64)).float()
              .requires_grad_() for _ in range(L)]
    mask = None
    if masked:
        mask = torch.ones(B, T)
        mask[0, 3:] = 0
        mask[2, 1:] = 0
    loss = load_balancing_loss_func(tuple(layers), E, K, mask)
    loss.backward()
    grad = torch.cat([g.grad for g in layers])
    logits = torch.cat([g.detach() for g in layers])
    zl = logits.clone().requires_grad_()
    z = router_z_loss_func(zl.view(1, -1, E))
    z.backward()
    flat = (mask.reshape(-1) if masked else torch.ones(B * T)).repeat(L)
    save_file({"logits": logits.contiguous(), "mask": flat.contiguous(),
               "k": torch.tensor([float(K)]), "loss": loss.detach().reshape(1),
               "grad": grad.contiguous(), "z_loss": z.detach().reshape(1),
               "z_grad": zl.grad.contiguous()}, os.path.join(ROOT, name + ".safetensors"))
    print(name, float(loss), float(z))


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    case("mixtral_top2", 1, False)
    case("mixtral_top2_masked", 2, True)
