#!/usr/bin/env python3
"""Generates the model-family fixtures for tests/runtime/nn/families_test.cc with
the real `transformers`: for each family a tiny randomised model whose
weights have real spread (matrices N(0, 0.2), norm gains 1 + N(0, 0.2),
biases N(0, 0.1)), so that a convention error — RoPE dropped or mis-scaled,
a transposed fused projection, a norm without its offset, a window off by
one — moves the loss and the gradients far past the tests' tolerance.

Under tests/fixtures/families/<case>/:
  model/config.json + model/model.safetensors   save_pretrained(): what users load
  golden.safetensors: input_ids, targets (I32 [2, 7]), logits (F32 [14, V]),
                      loss (F32 [1]), grad.<name> for every parameter
The loss is the mean next-token cross-entropy over all 14 positions.

  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers safetensors
  /tmp/venv/bin/python scripts/gen_families.py
"""
import os
import shutil

import torch
import torch.nn.functional as F
import transformers as tf
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                    "families")
B, T, V = 2, 7, 61
LLAMA = dict(vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
             rms_norm_eps=1e-6)

CASES = {
    # head_dim apart from hidden/heads, every bias, llama3 RoPE scaling (one medium
    # frequency smoothed, the rest divided by the factor).
    "llama_headdim_bias_llama3": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(
        LLAMA, head_dim=12, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=4.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=8))),
    "llama_linear_rope": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(
        LLAMA, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=2.0))),
    "mistral_window": (tf.MistralConfig, tf.MistralForCausalLM, dict(
        LLAMA, sliding_window=3, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    "qwen2_bias_window": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(
        LLAMA, use_sliding_window=True, sliding_window=4, max_window_layers=1,
        tie_word_embeddings=False, rope_parameters=dict(rope_type="default", rope_theta=1000.0))),
    "qwen3_qknorm": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(
        LLAMA, head_dim=12, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    "phi3_fused": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(
        LLAMA, sliding_window=5, tie_word_embeddings=False, pad_token_id=None, bos_token_id=1,
        eos_token_id=2,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(
        vocab_size=V, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=16,
        rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    "gpt2_inverse_layer": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(
        vocab_size=V, n_positions=16, n_embd=24, n_layer=3, n_head=3, n_inner=40,
        scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)),
    # Phi-4-mini style: RoPE on the first int(8 * 0.75) = 6 dims of each head.
    "phi3_partial_rotary": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(
        LLAMA, tie_word_embeddings=False, pad_token_id=None, bos_token_id=1, eos_token_id=2,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.75))),
}


def spread(model, gemma, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and ("norm" in n or ".ln_" in n):
                p.copy_(0.2 * r if gemma else 1.0 + 0.2 * r)  # Gemma's gain is 1 + w
            elif p.ndim == 1:
                p.copy_(0.1 * r)
            else:
                p.copy_(0.2 * r)


def main():
    torch.set_num_threads(1)  # one reduction order: the same bytes on every run
    shutil.rmtree(ROOT, ignore_errors=True)
    for k, (name, (cfg_cls, model_cls, kw)) in enumerate(CASES.items()):
        cfg = cfg_cls(**kw)
        cfg._attn_implementation = "eager"
        torch.manual_seed(100 + k)
        model = model_cls(cfg).float()
        spread(model, name == "gemma", 200 + k)
        model.train(False)
        out = os.path.join(ROOT, name)
        model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
        gen = os.path.join(out, "model", "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)
        g = torch.Generator().manual_seed(300 + k)
        ids = torch.randint(0, V, (B, T), generator=g)
        targets = torch.randint(0, V, (B, T), generator=g)
        logits = model(input_ids=ids).logits.reshape(B * T, V)
        loss = F.cross_entropy(logits, targets.reshape(-1))
        loss.backward()
        tensors = {"input_ids": ids.to(torch.int32).contiguous(),
                   "targets": targets.to(torch.int32).contiguous(),
                   "logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
        for n, p in model.named_parameters():
            tensors["grad." + n] = p.grad.detach().contiguous()
        save_file(tensors, os.path.join(out, "golden.safetensors"),
                  metadata={"torch": torch.__version__, "transformers": tf.__version__})
        print(f"{name}: loss {loss.item():.5f}, {sum(p.numel() for p in model.parameters())} params")


if __name__ == "__main__":
    main()
