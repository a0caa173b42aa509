#!/usr/bin/env python3
"""Generates tests/fixtures/arrow_model/ for tests/routing/arrow_peft_test.cc:
PEFT's create_arrow_model end to end on the tiny Hugging Face Llama of
tests/fixtures/golden/llama — four task LoRA experts (r 4, each its own
lora_alpha) on q_proj, v_proj, up_proj and down_proj, saved as PEFT folders
and loaded by create_arrow_model with ArrowConfig(top_k=2,
router_temperature=1.0); with use_gks, two "general" experts too. Each
expert's B·A is well-conditioned in every module (σ₂/σ₁ = 0.4, so PEFT's 15
power steps converge and its prototypes equal the exact ones up to sign).

One file per case, <case>.safetensors:
  e<k>.<module>.lora_A [r, in], e<k>.<module>.lora_B [out, r] (task experts
  k = 0..3 in create_arrow_model's order), g<k>.<module>.* (general
  experts), scaling [4] (alpha / r of each task expert), logits [B·T, vocab]
  (the Arrow model's, eval mode), plain [B·T, vocab] (the base alone),
  top_k, temperature [1].

  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers peft safetensors
  /tmp/venv/bin/python scripts/gen_arrow_model_fixture.py
"""
import os
import tempfile

import torch
from peft import ArrowConfig, LoraConfig, create_arrow_model, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "tests", "fixtures", "golden", "llama")
ROOT = os.path.join(HERE, "..", "tests", "fixtures", "arrow_model")
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
R = 4


def base():
    return AutoModelForCausalLM.from_pretrained(os.path.join(GOLDEN, "model"), torch_dtype=torch.float32)


def factors(gen, out, inp, scale):
    # B·A = U diag(σ) Vᵀ behind a random invertible G, σ₂/σ₁ = 0.4.
    U, _ = torch.linalg.qr(torch.randn(out, R, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(inp, R, generator=gen, dtype=torch.float64))
    sigma = torch.tensor([2.0, 0.8, 0.5, 0.3], dtype=torch.float64) * scale
    G = torch.eye(R, dtype=torch.float64) * 1.5 + 0.3 * torch.randn(R, R, generator=gen, dtype=torch.float64)
    return (G @ V.T).float(), (U @ torch.diag(sigma) @ torch.linalg.inv(G)).float()


def save_expert(path, gen, alpha, scale, tensors, key):
    """A PEFT LoRA folder of controlled factors; its factors into `tensors`."""
    model = get_peft_model(base(), LoraConfig(r=R, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0))
    with torch.no_grad():
        for name, mod in model.named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                W = mod.base_layer.weight
                A, B = factors(gen, W.shape[0], W.shape[1], scale)
                mod.lora_A["default"].weight.copy_(A)
                mod.lora_B["default"].weight.copy_(B)
                m = name[len("base_model.model."):]
                tensors[f"{key}.{m}.lora_A"] = A.contiguous()
                tensors[f"{key}.{m}.lora_B"] = B.contiguous()
    model.save_pretrained(path)


def case(name, seed, general):
    gen = torch.Generator().manual_seed(seed)
    t = {}
    alphas = [8.0, 4.0, 16.0, 2.0]
    with tempfile.TemporaryDirectory() as tmp:
        tasks = []
        for k, a in enumerate(alphas):
            tasks.append(os.path.join(tmp, f"task{k}"))
            save_expert(tasks[-1], gen, a, 1.0, t, f"e{k}")
        generals = []
        for k in range(general):
            generals.append(os.path.join(tmp, f"general{k}"))
            save_expert(generals[-1], gen, 8.0, 0.1, t, f"g{k}")
        cfg = ArrowConfig(top_k=2, router_temperature=1.0, use_gks=general > 0)
        model = create_arrow_model(base(), tasks, cfg, general_adapter_paths=generals or None)
        model.eval()
        ids = load_file(os.path.join(GOLDEN, "golden.safetensors"))["input_ids"].long()
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            plain = base()(input_ids=ids).logits
    vocab = logits.shape[-1]
    t["logits"] = logits.reshape(-1, vocab).contiguous()
    t["plain"] = plain.reshape(-1, vocab).contiguous()
    t["scaling"] = torch.tensor([a / R for a in alphas])
    t["top_k"] = torch.tensor([2.0])
    t["temperature"] = torch.tensor([1.0])
    save_file(t, os.path.join(ROOT, f"{name}.safetensors"))
    print(name, "|logits - plain|", float((t["logits"] - t["plain"]).norm()), "|logits|", float(t["logits"].norm()))


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    case("llama_k2", 21, 0)
    case("llama_k2_gks", 22, 2)
