#!/usr/bin/env python3
"""Checks that transformers loads directories exported by burnish and gives the reference
outputs. Not run by CI (it needs Python); run after changing the exporter:

    cargo run -p burnish-loader --example export -- tests/reference/models/<name> /tmp/out/<name>
    python3 tests/reference/verify_export.py /tmp/out

For every <name> under the given folder, loads it with transformers' AutoModel classes and
compares with tests/reference/fixtures/models.json and families.json (max |diff| must be
<= 1e-5).
"""
import json
import pathlib
import sys

import torch
from transformers import AutoModel, AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent


def main(out_root):
    cases = [case for fixture in ["models.json", "families.json"]
             for case in json.loads((ROOT / "fixtures" / fixture).read_text())["cases"]]
    worst = 0.0
    checked = 0
    for case in cases:
        path = pathlib.Path(out_root) / case["checkpoint"]
        if not path.is_dir():
            continue
        ids = torch.tensor(case["input_ids"]).reshape(case["shape"])
        mask = torch.tensor(case["attention_mask"]).reshape(case["shape"])
        with torch.no_grad():
            if "logits" in case:
                model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
                got = model(input_ids=ids, attention_mask=mask).logits.reshape(-1)
                want = torch.tensor(case["logits"])
                keep = mask.reshape(-1).repeat_interleave(case["vocab"]) == 1
                diff = (got - want)[keep].abs().max().item()
            else:
                model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
                types = case.get("token_type_ids")
                # DistilBERT and ModernBERT take no token types at all.
                extra = {"token_type_ids": torch.tensor(types).reshape(case["shape"])} if types else {}
                got = model(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
                diff = (got.reshape(-1) - torch.tensor(case["last_hidden_state"])).abs().max().item()
        print(f"{case['name']}: transformers reloads the export, max |diff| = {diff:.3g}")
        worst = max(worst, diff)
        checked += 1
    if checked == 0 or worst > 1e-5:
        sys.exit(f"FAILED: {checked} checked, worst {worst}")
    print(f"OK: {checked} exports, worst {worst:.3g}")


if __name__ == "__main__":
    main(sys.argv[1])
