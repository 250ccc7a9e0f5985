#!/usr/bin/env python3
"""Checks that transformers loads the `final/` directories `burnish train` wrote as the
matching AutoModelFor... class (no missing or unexpected weights) and computes the logits
`burnish predict` wrote. Run here after the CLI tests; CI has no Python.

    python3 tests/reference/verify_cli.py MODEL_DIR PREDICT_INPUT PREDICT_OUTPUT [...]
"""
import json
import sys

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)


def check(model_dir, inputs, outputs):
    config = json.load(open(f"{model_dir}/config.json"))
    arch = config["architectures"][0]
    cls = {"SequenceClassification": AutoModelForSequenceClassification,
           "TokenClassification": AutoModelForTokenClassification,
           "CausalLM": AutoModelForCausalLM}[next(k for k in ("SequenceClassification", "TokenClassification", "CausalLM") if arch.endswith(k))]
    model, info = cls.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    worst = 0.0
    for x, y in zip(map(json.loads, open(inputs)), map(json.loads, open(outputs))):
        if "text" in x and arch.endswith("SequenceClassification"):
            enc = tok(x["text"], return_tensors="pt")
            logits = model(**enc).logits[0]
            worst = max(worst, (logits - torch.tensor(y["logits"])).abs().max().item())
            assert model.config.id2label[int(logits.argmax())] == y["label"]
        elif "tokens" in x:
            enc = tok(x["tokens"], is_split_into_words=True, return_tensors="pt")
            logits = model(**enc).logits[0]
            words = enc.word_ids()
            firsts = [i for i, w in enumerate(words) if w is not None and (i == 0 or words[i - 1] != w)]
            worst = max(worst, (logits[firsts] - torch.tensor(y["logits"])).abs().max().item())
        elif "prompt" in x:
            enc = tok(x["prompt"], return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=len(y["tokens"]), do_sample=False)
            assert out[0, enc["input_ids"].shape[1]:].tolist() == y["tokens"], (out, y)
    print(f"{model_dir}: {cls.__name__} loads; max |Δ logits| {worst:.2e}")


if __name__ == "__main__":
    args = sys.argv[1:]
    with torch.no_grad():
        for i in range(0, len(args), 3):
            check(*args[i:i + 3])
