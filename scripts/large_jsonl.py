#!/usr/bin/env python3
"""Writes a large sentiment JSONL (default 1 GiB of review-length rows, ~1 KB each) in the
toy vocabulary of tests/assets/toy-bert, to show that `burnish train` streams a training file larger than it
holds in memory: one pass to tokenize into the on-disk cache, then epochs read batches by
position. Deterministic (seeded).

    python3 scripts/large_jsonl.py /tmp/large/train.jsonl --bytes 1073741824
    /usr/bin/time -v target/release/burnish train --config scripts/large.toml
"""
import argparse
import json
import random

POSITIVE = "good great fine superb lovely brilliant wonderful moving".split()
NEGATIVE = "bad awful dull boring weak poor dreadful tedious".split()
FILLER = "the film was a movie plot and acting story it is really quite".split()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--bytes", type=int, default=1 << 30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--min-words", type=int, default=150, help="words per row, at least")
    p.add_argument("--max-words", type=int, default=250, help="words per row, at most")
    args = p.parse_args()
    rng = random.Random(args.seed)
    written, rows = 0, 0
    with open(args.out, "w") as f:
        while written < args.bytes:
            label = rng.randrange(2)
            words = [rng.choice(FILLER) for _ in range(rng.randrange(args.min_words, args.max_words))]
            # The telling word comes early, within the tokens training keeps (max_length 32).
            words.insert(rng.randrange(min(len(words) + 1, 20)), rng.choice(POSITIVE if label else NEGATIVE))
            line = json.dumps({"text": " ".join(words), "label": label}) + "\n"
            f.write(line)
            written += len(line)
            rows += 1
    print(f"{args.out}: {rows} rows, {written} bytes")


if __name__ == "__main__":
    main()
