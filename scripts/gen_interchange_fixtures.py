#!/usr/bin/env python3
"""Generates the PEFT interchange fixtures for tests/adapters/peft_interchange_test.cc
with the real `transformers` and `peft`: the everyday adapter folders users
bring, and what peft itself computes with them.

Under tests/fixtures/interchange/:
  gpt2_untied/model/        a tiny GPT-2 with an untied lm_head, weights with real
                            spread (a transposed or mis-scaled delta moves the logits
                            far past the tests' tolerance)
  ids.safetensors           input_ids I32 [2, 7]
  <case>/                   adapter_config.json + adapter_model.safetensors (or .bin)
                            + peft_golden.safetensors (logits of peft's adapted model,
                            F32 [14, V]) where peft loads the folder
Cases:
  conv1d_and_linear   LoRA on c_attn (Conv1D) and lm_head (Linear): peft saves
                      fan_in_fan_out=False and lm_head.base_layer.weight
  dead_target         target_modules ["c_attn", "mlp.c_fc", "down_proj"]: the last
                      matches nothing; peft loads the others
  name_kept           the dead_target tensors with keys `.lora_A.default.weight`
                      (peft loads them: same logits)
  double_prefix       keys `base_model.model.base_model.model....` (peft loads a
                      zero adapter: refused)
  other_lm_head       conv1d_and_linear with lm_head.base_layer.weight changed
                      (peft would load it over the base's: refused)
  bin_only            saved with safe_serialization=False (adapter_model.bin)
  pissa               init_lora_weights="pissa" (c_attn, c_proj): peft subtracts the top-r
                      SVD part of each base weight at load; golden = a fresh base +
                      PeftModel.from_pretrained, as a user loads it
  olora               init_lora_weights="olora" (lm_head, the square attn.c_proj): W - s*Qr*Rr
  pissa_niter         the pissa folder with "pissa_niter_4" (randomised SVD): refused
  layers              layers_to_transform=[1], layers_pattern="h": block 1 only
  pattern_order       rank_pattern / alpha_pattern whose keys both match h.1's c_attn:
                      peft takes the first key as written in the file. (peft's own
                      save_pretrained writes the keys sorted, which here would make its
                      own reload fail on the shapes; the config is re-written in the order
                      the adapter was made with.) A key that matches nothing
                      ("nothing_here") is reported
  exclude             exclude_modules=["h.0.attn.c_attn"] beside target_modules c_attn
  gpt2_tied/model     the same GPT-2 with lm_head tied to wte
  tied_lm_head        LoRA on c_attn and the tied lm_head (on gpt2_tied)
  embedding           LoRA on wte (lora_embedding_A/B) and c_attn, rank 3 on wte by
                      rank_pattern
  tied_embedding      LoRA on the tied wte alone (on gpt2_tied): the lookup changes,
                      the output layer keeps the base table
  modules_to_save     LoRA on c_attn, modules_to_save ["lm_head", "wpe"] (a Linear and an
                      Embedding), the saved copies moved off the base's values
  save_norm           modules_to_save ["ln_f"]: a LayerNorm, refused by name

  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers safetensors peft
  /tmp/venv/bin/python scripts/gen_interchange_fixtures.py
"""
import json
import os
import shutil
import sys
import warnings

# peft keeps target_modules as a set: its saved order follows the string hash.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})

import peft
import torch
import transformers
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                    "interchange")
warnings.simplefilter("ignore")


def spread(model, seed):
    """Weights with real spread: N(0, 0.2) matrices, norm gains 1 + N(0, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".weight") and p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def base(tied=False):
    cfg = transformers.GPT2Config(vocab_size=61, n_positions=16, n_embd=24, n_layer=2, n_head=3,
                                  n_inner=48, tie_word_embeddings=tied, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(cfg)
    spread(m, 1)
    return m


def adapted(base_dir, config, seed):
    """The base with a peft LoRA of `config`, its factors (and saved copies) given real spread."""
    m = transformers.GPT2LMHeadModel.from_pretrained(base_dir, attn_implementation="eager").eval()
    pm = peft.get_peft_model(m, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:  # lora_A/B, lora_embedding_A/B: as if trained
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "modules_to_save" in n:  # a saved copy, moved off the base's values
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return pm.eval()


def save_golden(pm, ids, out):
    with torch.no_grad():
        logits = pm(input_ids=ids).logits.reshape(-1, pm.config.vocab_size)
    save_file({"logits": logits.contiguous()}, os.path.join(out, "peft_golden.safetensors"),
              metadata={"peft": peft.__version__, "transformers": transformers.__version__,
                        "torch": torch.__version__})


def clean(out):
    readme = os.path.join(out, "README.md")
    if os.path.exists(readme):
        os.remove(readme)  # a generated model card, not a fixture


def main():
    torch.set_num_threads(1)  # one reduction order: the same bytes on every run
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    base_dir = os.path.join(ROOT, "gpt2_untied", "model")
    tied_dir = os.path.join(ROOT, "gpt2_tied", "model")
    base().save_pretrained(base_dir)
    base(tied=True).save_pretrained(tied_dir)
    for d in (base_dir, tied_dir):
        for f in os.listdir(d):
            if f not in ("config.json", "model.safetensors"):
                os.remove(os.path.join(d, f))
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 61, (2, 7), generator=g)
    save_file({"input_ids": ids.to(torch.int32)}, os.path.join(ROOT, "ids.safetensors"))

    cases = {
        "conv1d_and_linear": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "lm_head"]),
        "dead_target": peft.LoraConfig(r=4, lora_alpha=8,
                                       target_modules=["c_attn", "mlp.c_fc", "down_proj"]),
    }
    for k, (name, cfg) in enumerate(cases.items()):
        pm = adapted(base_dir, cfg, 10 + k)
        out = os.path.join(ROOT, name)
        pm.save_pretrained(out)
        clean(out)
        save_golden(pm, ids, out)
        print(name, sorted(load_file(os.path.join(out, "adapter_model.safetensors"))))

    src = os.path.join(ROOT, "dead_target")
    # Keys as a PeftModel's state_dict() has them: peft loads these exactly.
    dst = os.path.join(ROOT, "name_kept")
    shutil.copytree(src, dst)
    sd = load_file(os.path.join(src, "adapter_model.safetensors"))
    save_file({k.replace(".weight", ".default.weight"): v for k, v in sd.items()},
              os.path.join(dst, "adapter_model.safetensors"), metadata={"format": "pt"})
    back = peft.PeftModel.from_pretrained(
        transformers.GPT2LMHeadModel.from_pretrained(base_dir, attn_implementation="eager"), dst).eval()
    with torch.no_grad():
        a = back(input_ids=ids).logits.reshape(-1, 61)
    want = load_file(os.path.join(src, "peft_golden.safetensors"))["logits"]
    assert torch.allclose(a, want, atol=1e-5), "peft no longer loads adapter-name keys"

    dst = os.path.join(ROOT, "double_prefix")
    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, "peft_golden.safetensors"))
    save_file({"base_model.model." + k: v for k, v in sd.items()},
              os.path.join(dst, "adapter_model.safetensors"), metadata={"format": "pt"})

    src = os.path.join(ROOT, "conv1d_and_linear")
    dst = os.path.join(ROOT, "other_lm_head")
    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, "peft_golden.safetensors"))
    sd = load_file(os.path.join(src, "adapter_model.safetensors"))
    sd["base_model.model.lm_head.base_layer.weight"] = sd["base_model.model.lm_head.base_layer.weight"] * 1.1
    save_file(sd, os.path.join(dst, "adapter_model.safetensors"), metadata={"format": "pt"})

    loaded = {
        "pissa": peft.LoraConfig(r=2, lora_alpha=4, init_lora_weights="pissa",
                                 target_modules=["c_attn", "attn.c_proj"]),
        "olora": peft.LoraConfig(r=2, lora_alpha=8, init_lora_weights="olora",
                                 target_modules=["attn.c_proj", "lm_head"]),
        "layers": peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"],
                                  layers_to_transform=[1], layers_pattern="h"),
        "pattern_order": peft.LoraConfig(
            r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"],
            rank_pattern={"h.1.attn.c_attn": 5, "c_attn": 3, "nothing_here": 4},
            alpha_pattern={"h.1.attn.c_attn": 7, "c_attn": 2}),
        "exclude": peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"],
                                   exclude_modules=["h.0.attn.c_attn"]),
    }
    for k, (name, cfg) in enumerate(loaded.items()):
        pm = adapted(base_dir, cfg, 30 + k)
        out = os.path.join(ROOT, name)
        pm.save_pretrained(out)
        clean(out)
        if name == "pattern_order":
            cfg_path = os.path.join(out, "adapter_config.json")
            c = json.load(open(cfg_path))
            c["rank_pattern"], c["alpha_pattern"] = dict(cfg.rank_pattern), dict(cfg.alpha_pattern)
            json.dump(c, open(cfg_path, "w"), indent=2)
        # What a user gets: a fresh base, the folder loaded by peft.
        fresh = transformers.GPT2LMHeadModel.from_pretrained(base_dir, attn_implementation="eager")
        back = peft.PeftModel.from_pretrained(fresh, out).eval()
        save_golden(back, ids, out)
        print(name, "modules", sorted({k.rsplit(".lora_", 1)[0] for k in
                                       load_file(os.path.join(out, "adapter_model.safetensors"))}))
    # What a user gets from each: a fresh base, the folder loaded by peft.
    for name, bdir, cfg, seed in (
            ("tied_lm_head", tied_dir,
             peft.LoraConfig(r=3, lora_alpha=6, target_modules=["c_attn", "lm_head"]), 40),
            ("embedding", base_dir, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["wte", "c_attn"],
                                                    rank_pattern={"wte": 3}), 50),
            ("tied_embedding", tied_dir, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["wte"]), 50),
            ("modules_to_save", base_dir, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"],
                                                          modules_to_save=["lm_head", "wpe"]), 60),
            ("save_norm", base_dir, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"],
                                                    modules_to_save=["ln_f"]), 60)):
        out = os.path.join(ROOT, name)
        adapted(bdir, cfg, seed).save_pretrained(out)
        clean(out)
        back = peft.PeftModel.from_pretrained(
            transformers.GPT2LMHeadModel.from_pretrained(bdir, attn_implementation="eager"), out).eval()
        save_golden(back, ids, out)
        print(name, sorted(load_file(os.path.join(out, "adapter_model.safetensors"))))

    dst = os.path.join(ROOT, "pissa_niter")
    shutil.copytree(os.path.join(ROOT, "pissa"), dst)
    os.remove(os.path.join(dst, "peft_golden.safetensors"))
    cfg_path = os.path.join(dst, "adapter_config.json")
    c = json.load(open(cfg_path))
    c["init_lora_weights"] = "pissa_niter_4"
    json.dump(c, open(cfg_path, "w"), indent=2)

    pm = adapted(base_dir, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"]), 20)
    out = os.path.join(ROOT, "bin_only")
    pm.save_pretrained(out, safe_serialization=False)
    clean(out)
    print("written under", os.path.normpath(ROOT))


if __name__ == "__main__":
    main()
