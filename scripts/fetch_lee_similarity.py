#!/usr/bin/env python3
"""Writes a real sentence-pair regression set: the Lee et al. (2005) document similarity
ratings, 50 short news articles and the mean human similarity (0 to 1) of each of their
1225 pairs, as shipped in the test data of the PyPI package gensim 4.4.0 (LGPL-2.1).

    python3 scripts/fetch_lee_similarity.py                 # downloads the wheel with pip
    python3 scripts/fetch_lee_similarity.py --wheel gensim-4.4.0-....whl

Writes data/lee-similarity/{train,validation}.jsonl (ignored by git: the ratings carry no
licence of their own, so burnish does not ship them), `{"text": article, "text_pair":
article, "label": similarity}`: pairs of articles 0-39 train (780), every other pair
validates (445). Used by examples/configs/minilm-lee-similarity.toml.
"""
import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL = "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8"
PIP = ["download", "gensim==4.4.0", "--no-deps", "--only-binary", ":all:", "--python-version",
       "3.11", "--implementation", "cp", "--abi", "cp311", "--platform",
       "manylinux_2_28_x86_64"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", *PIP, "-d", tmp], check=True)
            wheel = Path(tmp) / WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            sys.exit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
        z = zipfile.ZipFile(wheel)
        docs = z.read("gensim/test/test_data/lee.cor").decode("latin1").splitlines()
        ratings = z.read("gensim/test/test_data/similarities0-1.txt").decode().splitlines()
    sim = [line.split("\t") for line in ratings]
    assert len(docs) == 50 and len(sim) == 50
    splits = {"train": [], "validation": []}
    for i in range(50):
        for j in range(i + 1, 50):
            row = {"text": docs[i].strip(), "text_pair": docs[j].strip(), "label": float(sim[i][j])}
            splits["train" if j < 40 else "validation"].append(row)
    out = REPO / "data" / "lee-similarity"
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
