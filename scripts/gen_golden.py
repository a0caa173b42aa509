#!/usr/bin/env python3
"""Generates the PyTorch golden fixtures for tests/runtime/nn/golden_test.cc.

For a tiny GPT-2 and a tiny Llama (grouped-query heads) built by Hugging Face
transformers with seeded random weights, writes under tests/fixtures/golden/<arch>/:
  model/config.json + model/model.safetensors   (save_pretrained: what users load)
  golden.safetensors: input_ids, targets (I32 [B, T]), logits (F32 [B*T, V]),
                      loss (F32 [1]), and grad.<name> for every parameter.
The loss is the mean next-token cross-entropy over all B*T positions.

Run once from a virtualenv with PyPI's torch, transformers and safetensors:
  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers safetensors
  /tmp/venv/bin/python scripts/gen_golden.py
The C++ test needs no Python.
"""
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "golden")
B, T = 2, 7


def build(arch):
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=61, n_positions=16, n_embd=24, n_layer=2, n_head=3,
                                      activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=44,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=16, rms_norm_eps=1e-6, rope_theta=10000.0,
                                       tie_word_embeddings=False, attention_bias=False)
        cfg._attn_implementation = "eager"
        model = transformers.LlamaForCausalLM(cfg)
    # Larger-than-default weights so every path (norm gains, biases) is exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if "weight" in name and ("ln" in name or "norm" in name) else 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    return model.float()


def main():
    for arch in ("gpt2", "llama"):
        torch.manual_seed(1234 if arch == "gpt2" else 5678)
        model = build(arch)
        model.train(False)
        out = os.path.join(ROOT, arch)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
        V = model.config.vocab_size
        ids = torch.randint(0, V, (B, T))
        targets = torch.randint(0, V, (B, T))
        logits = model(input_ids=ids).logits.reshape(B * T, V)
        loss = F.cross_entropy(logits, targets.reshape(-1))
        loss.backward()
        tensors = {
            "input_ids": ids.to(torch.int32).contiguous(),
            "targets": targets.to(torch.int32).contiguous(),
            "logits": logits.detach().contiguous(),
            "loss": loss.detach().reshape(1),
        }
        for name, p in model.named_parameters():
            tensors["grad." + name] = p.grad.detach().contiguous()
        save_file(tensors, os.path.join(out, "golden.safetensors"),
                  metadata={"torch": torch.__version__, "transformers": transformers.__version__})
        print(arch, "loss", loss.item(), "params", sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    sys.exit(main())
