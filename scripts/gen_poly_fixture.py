#!/usr/bin/env python3
"""Generates tests/fixtures/poly/ for tests/routing/poly_test.cc with
PEFT's own PolyModel (peft.PolyConfig, poly_type "poly"), in evaluation mode
(weights σ(Z[task]) normalised per split).

Parameters get real spread so that a wrong convention fails the test: lora_B
from kaiming_uniform (init_weights=False), module logits N(0, 1.5²) instead
of PEFT's U(±1e-3) (which would make every weight ≈ 1/S), 4 splits, so a
split taken along the wrong axis, an unnormalised weight, a softmax instead
of σ/Σσ, or scale α/r instead of 1/r moves the output far past 1e-5.

Two cases:
  mlp.safetensors: a two-layer MLP (fc1 24→20, ReLU, fc2 20→12) with Poly on
    both Linears; x [6, 24] (PEFT's Poly needs [batch, seq, in]: seq 1),
    task_ids [6]; fc1.weight/bias, fc2.weight/bias; y [6, 12].
  llama.safetensors: the golden tiny Llama (tests/fixtures/golden/llama/model)
    with Poly on q_proj, v_proj, up_proj, down_proj; input_ids [2, T]
    (golden.safetensors'), task_ids [2]; logits [2·T, vocab].
Each adapted module m: m.poly_lora_A [S, r, in], m.poly_lora_B [S, out, r]
(tessera's layout: PEFT's poly_lora_A [splits, S, in/splits, r] and
poly_lora_B [splits, S, r, out/splits] rearranged) and m.module_logits
[tasks, splits·S]; meta [4] = tasks, skills, splits, r.

  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers peft safetensors
  /tmp/venv/bin/python scripts/gen_poly_fixture.py
"""
import os

import torch
from peft import PolyConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "tests", "fixtures", "poly")
TASKS, SKILLS, SPLITS, R = 3, 3, 4, 4


def ours(peft_model, prefix_strip):
    """Every Poly module's parameters in tessera's layout."""
    t = {}
    for name, mod in peft_model.named_modules():
        if not hasattr(mod, "poly_lora_A") or "default" not in mod.poly_lora_A:
            continue
        m = name[len(prefix_strip):] if name.startswith(prefix_strip) else name
        A = mod.poly_lora_A["default"].detach()  # [q, S, in/q, r]
        B = mod.poly_lora_B["default"].detach()  # [q, S, r, out/q]
        q, S, dq, r = A.shape
        # A_ours[s][j, c·dq + d] = A[c, s, d, j]
        t[m + ".poly_lora_A"] = A.permute(1, 3, 0, 2).reshape(S, r, q * dq).contiguous()
        # B_ours[s][c·oq + d, j] = B[c, s, j, d]
        oq = B.shape[3]
        t[m + ".poly_lora_B"] = B.permute(1, 0, 3, 2).reshape(S, q * oq, r).contiguous()
        t[m + ".module_logits"] = mod.poly_router["default"].module_logits.detach().contiguous()
    return t


def spread(peft_model, gen):
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if name.endswith("module_logits"):
                p.copy_(1.5 * torch.randn(p.shape, generator=gen))


def cfg(targets):
    return PolyConfig(task_type=None, r=R, n_tasks=TASKS, n_skills=SKILLS, n_splits=SPLITS,
                      target_modules=targets, init_weights=False)


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(24, 20)
        self.fc2 = torch.nn.Linear(20, 12)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def mlp_case():
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(11)
    base = Mlp()
    weights = {k: v.detach().clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, cfg(["fc1", "fc2"]))
    spread(model, gen)
    model.eval()
    x = torch.randn(6, 1, 24, generator=gen)
    task_ids = torch.tensor([0, 2, 1, 2, 0, 1])
    with torch.no_grad():
        y = model.base_model(x, task_ids=task_ids).reshape(6, 12)
    t = ours(model, "base_model.model.")
    t.update({k: v.contiguous() for k, v in weights.items()})
    t.update({"x": x.reshape(6, 24).contiguous(), "task_ids": task_ids.float(), "y": y.contiguous(),
              "meta": torch.tensor([TASKS, SKILLS, SPLITS, R], dtype=torch.float32)})
    save_file(t, os.path.join(ROOT, "mlp.safetensors"))
    print("mlp |y|", float(y.norm()))


def llama_case():
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(12)
    golden = os.path.join(HERE, "..", "tests", "fixtures", "golden", "llama")
    base = AutoModelForCausalLM.from_pretrained(os.path.join(golden, "model"),
                                                torch_dtype=torch.float32)
    model = get_peft_model(base, cfg(["q_proj", "v_proj", "up_proj", "down_proj"]))
    spread(model, gen)
    model.eval()
    ids = load_file(os.path.join(golden, "golden.safetensors"))["input_ids"].long()
    task_ids = torch.tensor([2, 0])
    with torch.no_grad():
        logits = model.base_model(input_ids=ids, task_ids=task_ids).logits.reshape(-1, base.config.vocab_size)
        with model.disable_adapter():
            plain = base(input_ids=ids).logits.reshape(-1, base.config.vocab_size)
    t = ours(model, "base_model.model.")
    t.update({"task_ids": task_ids.float(), "logits": logits.contiguous(),
              "meta": torch.tensor([TASKS, SKILLS, SPLITS, R], dtype=torch.float32)})
    save_file(t, os.path.join(ROOT, "llama.safetensors"))
    print("llama |logits - base|", float((logits - plain).norm()), "|logits|", float(logits.norm()))


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    mlp_case()
    llama_case()
