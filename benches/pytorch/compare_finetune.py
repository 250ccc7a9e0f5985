#!/usr/bin/env python3
"""The same fine-tune in burnish and in PyTorch + transformers, side by side: one
invocation runs `burnish train` (a subprocess) and the PyTorch loop (in this process) on the
same model, data, batch size, sequence length, steps and thread count, and prints
samples/s, tokens/s and peak RSS for both, and their ratios. Not run by CI.

    pip install torch transformers
    cargo build --release -p burnish-cli
    python3 benches/pytorch/compare_finetune.py --burnish target/release/burnish \\
        --model ../shared/models/all-MiniLM-L6-v2 --data ../shared/data/rotten_tomatoes \\
        --steps 30 --batch-size 16 --max-length 64 --threads 2

Several burnish variants in one invocation: repeat `--run NAME=BINARY:BACKEND`, e.g.
`--run flex=target/release/burnish:flex --run ndarray=target/release/burnish:ndarray
--run ndarray+blas=/tmp/burnish-blas:ndarray` (a build with `--features blas`).

Both sides train every parameter with AdamW (weight decay 0.01, no-decay groups), a linear
schedule, clipping at 1.0, dropout on; both time the training loop only (model loading and
tokenization excluded) and report the process's peak RSS.
"""
import argparse
import json
import os
import pathlib
import resource
import subprocess
import statistics
import sys
import tempfile
import time


def run_burnish(args, work, binary, backend):
    config = f"""
[model]
path = "{pathlib.Path(args.model).resolve()}"
task = "sequence-classification"
num_labels = 2
[data]
train = "{pathlib.Path(args.data).resolve() / 'train.jsonl'}"
max_length = {args.max_length}
shuffle = false
[train]
max_steps = {args.steps}
batch_size = {args.batch_size}
lr = 5e-5
warmup_steps = 0
log_every = 1000000
eval_at_start = false
"""
    path = pathlib.Path(work) / "bench.toml"
    path.write_text(config)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    out = pathlib.Path(work) / f"burnish-out-{backend}-{abs(hash(binary))}"
    child = subprocess.Popen([binary, "--backend", backend, "train", "--config", str(path),
                              "--output-dir", str(out), "--quiet"],
                             env=env, stdout=subprocess.DEVNULL)
    # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the max of all).
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"{binary} --backend {backend} failed ({status})")
    results = json.loads((out / "results.json").read_text())
    return results["train_seconds"], usage.ru_maxrss / 1024


def run_torch(args, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup
    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    model.train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=5e-5, foreach=False)
    sched = get_linear_schedule_with_warmup(opt, 0, args.steps)
    batches = []
    for s in range(args.steps):
        rows = texts[s * args.batch_size:(s + 1) * args.batch_size]
        enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=args.max_length,
                  return_tensors="pt")
        batches.append((enc, torch.tensor([r["label"] for r in rows])))
    start = time.perf_counter()
    for enc, labels in batches:
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    seconds = time.perf_counter() - start
    tokens = sum(int(enc["attention_mask"].sum()) for enc, _ in batches)
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, tokens


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--burnish", help="the burnish binary (with --backend)")
    p.add_argument("--run", action="append", default=[],
                   help="NAME=BINARY:BACKEND, repeatable: several burnish variants")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="ndarray", help="burnish's CPU backend: ndarray or flex")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of every run, interleaved; the table shows each run's median "
                        "and the spread (min-max) of its samples/s")
    args = p.parse_args()
    texts = [json.loads(l) for l in open(pathlib.Path(args.data) / "train.jsonl")]
    texts = texts[:args.steps * args.batch_size]
    if len(texts) < args.steps * args.batch_size:
        sys.exit("not enough training rows for that many steps")
    runs = []
    for spec in args.run:
        name, _, rest = spec.partition("=")
        binary, _, backend = rest.rpartition(":")
        if not (name and binary and backend):
            sys.exit(f"--run {spec}: expected NAME=BINARY:BACKEND")
        runs.append((name, binary, backend))
    if args.burnish:
        runs.append((args.backend, args.burnish, args.backend))
    if not runs:
        sys.exit("give --burnish BINARY or --run NAME=BINARY:BACKEND")
    names = [f"burnish {name}" for name, _, _ in runs] + ["pytorch"]
    seconds = {name: [] for name in names}
    rss = {name: 0.0 for name in names}
    tokens = 0
    # Rounds interleave the runs, so a slow spell of the machine hits every run alike.
    for round in range(args.repeat):
        with tempfile.TemporaryDirectory() as work:
            for (name, binary, backend), label in zip(runs, names):
                s, r = run_burnish(args, work, binary, backend)
                seconds[label].append(s)
                # A child forked after PyTorch was loaded here starts with this process's
                # pages in its peak RSS: only the first round measures burnish alone.
                if round == 0:
                    rss[label] = r
        s, r, tokens = run_torch(args, texts)
        seconds["pytorch"].append(s)
        rss["pytorch"] = max(rss["pytorch"], r)
    samples = args.steps * args.batch_size
    median = {name: statistics.median(v) for name, v in seconds.items()}
    print(f"{args.steps} steps x {args.batch_size} examples, max_length {args.max_length}, "
          f"{args.threads} threads, {tokens} real tokens, median of {args.repeat} round(s)")
    print(f"{'':22} {'samples/s':>10} {'min-max':>13} {'tokens/s':>10} {'peak RSS MB':>12} "
          f"{'vs pytorch':>11}")
    for name in names:
        spread = f"{samples / max(seconds[name]):.2f}-{samples / min(seconds[name]):.2f}"
        print(f"{name:22} {samples / median[name]:10.2f} {spread:>13} "
              f"{tokens / median[name]:10.0f} {rss[name]:12.0f} "
              f"{median['pytorch'] / median[name]:10.2f}x")

if __name__ == "__main__":
    main()
