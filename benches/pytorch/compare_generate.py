#!/usr/bin/env python3
"""Greedy generation in burnish and in transformers, side by side: one invocation runs
`burnish bench --generate` (a subprocess) and `model.generate` (in this process) on the same
decoder directory, prompt, number of new tokens and threads, and prints tokens/s for both,
their ratio, and whether the generated ids agree. Not run by CI.

    pip install torch transformers
    cargo build --release -p burnish-cli
    python3 benches/pytorch/compare_generate.py --burnish target/release/burnish \\
        --model /path/to/SmolLM2-135M-Instruct --new-tokens 32 --runs 3 --threads 2

Both sides generate exactly `--new-tokens` tokens per run (transformers with
`min_new_tokens`, burnish without an end-of-sequence stop), float32, KV cache on; both time
the runs only (loading excluded), after one warm-up run, and report the mean of `--runs`.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def run_burnish(args):
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    cmd = [args.burnish, "--backend", args.backend, "bench", "--model", args.model,
           "--generate", str(args.new_tokens), "--prompt", args.prompt,
           "--steps", str(args.runs), "--warmup", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_torch(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    ids = tok(args.prompt, return_tensors="pt")["input_ids"]
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                  min_new_tokens=args.new_tokens, do_sample=False)
    with torch.no_grad():
        model.generate(ids, **kwargs)
        start = time.perf_counter()
        for _ in range(args.runs):
            out = model.generate(ids, **kwargs)
        seconds = (time.perf_counter() - start) / args.runs
    tokens = out[0, ids.shape[1]:].tolist()
    return {"prompt_tokens": ids.shape[1], "run_seconds": seconds,
            "tokens_per_second": len(tokens) / seconds, "tokens": tokens}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--burnish", required=True, help="the burnish binary")
    p.add_argument("--backend", default="flex", help="burnish's CPU backend: flex or ndarray")
    p.add_argument("--model", required=True, help="a decoder's Hugging Face directory")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    ours = run_burnish(args)
    theirs = run_torch(args)
    print(f"{args.model}: prompt {theirs['prompt_tokens']} tokens, {args.new_tokens} new tokens, "
          f"{args.threads} threads, mean of {args.runs} runs")
    print("| | s/run | tokens/s | vs transformers |")
    print("|---|---:|---:|---:|")
    for name, r in [("transformers", theirs), (f"burnish ({args.backend})", ours)]:
        print(f"| {name} | {r['run_seconds']:.3f} | {r['tokens_per_second']:.1f} | "
              f"{r['tokens_per_second'] / theirs['tokens_per_second']:.2f}x |")
    same = ours["tokens"] == theirs["tokens"]
    agree = next((i for i, (a, b) in enumerate(zip(ours["tokens"], theirs["tokens"])) if a != b),
                 len(ours["tokens"]))
    print(f"generated ids equal: {same}" + ("" if same else f" (first {agree} equal)"))


if __name__ == "__main__":
    main()
