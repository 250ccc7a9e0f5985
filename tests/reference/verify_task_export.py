#!/usr/bin/env python3
"""Checks that transformers loads task models exported by burnish (`final/` or `best/` of a
run) with the right Auto class, nothing missing or unexpected, and the right
`problem_type`. Not run by CI (it needs Python); run after changing a head or the exporter:

    python3 tests/reference/verify_task_export.py runs/<run>/final [...]

For a question-answering export, also runs transformers' pipeline-free forward on one
question and prints its best span, so it can be compared with `burnish predict`.
"""
import json
import pathlib
import sys

import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)

CLASSES = {"ForSequenceClassification": AutoModelForSequenceClassification,
           "ForTokenClassification": AutoModelForTokenClassification,
           "ForQuestionAnswering": AutoModelForQuestionAnswering}


def check(path):
    config = json.loads((path / "config.json").read_text())
    arch = config["architectures"][0]
    auto = next(c for suffix, c in CLASSES.items() if arch.endswith(suffix))
    model, info = auto.from_pretrained(path, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"{path}: {bad}"
    assert type(model).__name__ == arch, f"{path}: {type(model).__name__} != {arch}"
    print(f"{path}: {arch}, problem_type={model.config.problem_type}, "
          f"num_labels={model.config.num_labels}: loads cleanly")
    if arch.endswith("ForQuestionAnswering"):
        tok = AutoTokenizer.from_pretrained(path)
        question, context = "Who met Bob?", "Alice met Bob in Paris on a rainy day."
        enc = tok(question, context, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc)
        s, e = int(out.start_logits.argmax()), int(out.end_logits.argmax())
        print(f"  best tokens {s}..{e}: {tok.decode(enc['input_ids'][0][s:e + 1])!r}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        check(pathlib.Path(arg))
