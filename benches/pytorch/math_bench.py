#!/usr/bin/env python3
"""PyTorch side of the math benchmarks: one clip_grad_norm_ and one AdamW step over
BERT-base-sized parameters (the same shapes as benches/src/lib.rs), 2 threads.

    pip install torch
    python3 benches/pytorch/math_bench.py
    cargo bench -p burnish-benches --bench clip --bench adamw

Not run by CI. Prints the median of 7 runs for each.
"""
import statistics
import time

import torch


def bert_base_shapes(vocab=30522, hidden=768, ffn=3072, layers=12):
    shapes = [(vocab, hidden), (512, hidden), (2, hidden), (hidden,), (hidden,)]
    for _ in range(layers):
        shapes += [(hidden, hidden)] * 4 + [(hidden, ffn), (ffn, hidden)]
        shapes += [(hidden,)] * 4 + [(ffn,), (hidden,), (hidden,), (hidden,), (hidden,), (hidden,)]
    return shapes + [(hidden, hidden), (hidden,)]


def median_time(fn, params, runs=7):
    times = []
    for _ in range(runs):
        for p in params:
            p.grad = torch.randn_like(p)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    torch.set_num_threads(2)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in bert_base_shapes()]
    n = sum(p.numel() for p in params)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n / 1e6:.1f}M parameters")
    t = median_time(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=False), params)
    print(f"clip_grad_norm_ (foreach=False): {t * 1e3:.1f} ms")
    t = median_time(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0), params)
    print(f"clip_grad_norm_ (default):       {t * 1e3:.1f} ms")
    for foreach in (False, True):
        opt = torch.optim.AdamW(params, lr=1e-5, foreach=foreach)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()  # moments exist from here on, as in the burnish bench
        t = median_time(opt.step, params)
        print(f"AdamW step (foreach={foreach}):      {t * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
