#!/usr/bin/env python3
"""Checks that the Hugging Face folders tessera writes load in the real
`transformers` and compute what the original checkpoint computes: for every
family fixture (tests/fixtures/families), tessera pretrains one step from it
with a learning rate too small to move a float32 weight, exports model/, and
transformers' AutoModelForCausalLM loads that folder; its logits on the
fixture's input ids must equal the fixture's. Prints one JSON line per
family. Needs a built tessera (TESSERA, default build/tessera).

  /tmp/venv/bin/python scripts/check_hf_export.py
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TESSERA = os.environ.get("TESSERA", os.path.join(ROOT, "build", "tessera"))
FIX = os.path.join(ROOT, "tests", "fixtures", "families")


def main():
    work = tempfile.mkdtemp(prefix="tessera-hf-export-")
    tokens = os.path.join(work, "tokens.bin")
    np.random.default_rng(0).integers(0, 61, 4096, dtype=np.uint16).tofile(tokens)
    bad = 0
    for name in sorted(os.listdir(FIX)):
        out = os.path.join(work, name)
        p = subprocess.run([TESSERA, "pretrain", "--model", "decoder", "--quiet",
                            f"decoder.init_from={FIX}/{name}/model", "data.kind=tokens",
                            f"data.files={tokens}", "steps=1", "optim.lr=1e-20",
                            "optim.warmup_steps=0", "batch_size=2", "data.seq_len=7",
                            "eval_batches=1", f"out_dir={out}", "threads=1"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(json.dumps({"family": name, "error": p.stdout + p.stderr}))
            bad += 1
            continue
        golden = load_file(f"{FIX}/{name}/golden.safetensors")
        m = transformers.AutoModelForCausalLM.from_pretrained(
            f"{out}/model", attn_implementation="eager").float().eval()
        with torch.no_grad():
            logits = m(input_ids=golden["input_ids"].long()).logits.reshape(-1, 61)
        err = float((logits - golden["logits"]).abs().max() / golden["logits"].abs().max())
        summary = p.stdout.strip().splitlines()[-1]
        print(json.dumps({"family": name, "class": type(m).__name__, "max_rel_logit_err": err,
                          "tessera": summary[:60]}))
        bad += err > 1e-5
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
