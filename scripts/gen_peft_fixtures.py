#!/usr/bin/env python3
"""Generates the PEFT fixtures for tests/adapters/peft_test.cc with the real
`peft` library: LoRA adapters on the tiny GPT-2 and Llama golden checkpoints
(tests/fixtures/golden/<arch>/model), saved with save_pretrained(), plus what
PEFT itself computes for them: every module's delta weight
(get_delta_weight, in the base weight's layout) and the logits of the adapted
model on the golden input ids.

  /tmp/venv/bin/pip install torch transformers safetensors peft
  /tmp/venv/bin/python scripts/gen_peft_fixtures.py
"""
import os

import peft
import torch
import transformers
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

CASES = {
    # Conv1D layout (fan_in_fan_out), a list of module names, per-module rank and alpha.
    "gpt2": dict(arch="gpt2", config=peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
        rank_pattern={"h.1.mlp.c_fc": 2}, alpha_pattern={"c_proj": 3}, lora_dropout=0.0)),
    # A regex string for target_modules and rsLoRA scaling.
    "llama": dict(arch="llama", config=peft.LoraConfig(
        r=4, lora_alpha=16, use_rslora=True, target_modules=r".*\.(q_proj|v_proj|down_proj)",
        lora_dropout=0.0)),
    # DoRA: a magnitude vector per module beside A and B (GPT-2's Conv1D layout).
    "gpt2_dora": dict(arch="gpt2", config=peft.LoraConfig(
        r=2, lora_alpha=4, use_dora=True, target_modules=["c_attn", "mlp.c_proj"],
        fan_in_fan_out=True, lora_dropout=0.0)),
}


def main():
    for name, case in CASES.items():
        torch.manual_seed(42)
        base_dir = os.path.join(ROOT, "golden", case["arch"], "model")
        cls = transformers.GPT2LMHeadModel if case["arch"] == "gpt2" else transformers.LlamaForCausalLM
        base = cls.from_pretrained(base_dir, attn_implementation="eager").float().eval()
        model = peft.get_peft_model(base, case["config"])
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n or "lora_A" in n:
                    p.normal_(0.0, 0.2)
                if "lora_magnitude_vector" in n:
                    p.mul_(1.0 + 0.1 * torch.randn_like(p))
        out = os.path.join(ROOT, "peft", name)
        model.save_pretrained(out)
        os.remove(os.path.join(out, "README.md"))  # a generated model card, not a fixture
        golden = load_file(os.path.join(ROOT, "golden", case["arch"], "golden.safetensors"))
        ids = golden["input_ids"].long()
        with torch.no_grad():
            logits = model(input_ids=ids).logits.reshape(-1, model.config.vocab_size)
        tensors = {"logits": logits.contiguous()}
        for mname, module in model.named_modules():
            if isinstance(module, peft.tuners.lora.LoraLayer) and "default" in module.lora_A:
                key = mname.replace("base_model.model.", "")
                tensors["delta." + key] = module.get_delta_weight("default").detach().contiguous()
        save_file(tensors, os.path.join(out, "peft_golden.safetensors"),
                  metadata={"peft": peft.__version__, "torch": torch.__version__})
        print(name, "modules", len(tensors) - 1)


if __name__ == "__main__":
    main()
