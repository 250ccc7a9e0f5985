#!/usr/bin/env python3
"""Writes the real sentence-pair and question-answering subsets burnish's end-to-end tests
fine-tune on, from the PyPI package bigbench 1.0.0 (Apache-2.0), which ships both data sets:

- tests/assets/data/vitaminc/{train,validation}.jsonl: VitaminC fact verification
  (Schuster et al., NAACL 2021; CC BY-SA 3.0), `{"text": evidence, "text_pair": claim,
  "label": SUPPORTS | REFUTES | NOT ENOUGH INFO}`, from
  `bigbench/benchmark_tasks/vitaminc_fact_verification/task.json`;
- tests/assets/data/squadshifts-wiki/{train,validation}.jsonl: SQuADShifts, the new
  Wikipedia set (Miller et al., ICML 2020; CC BY 4.0), SQuAD's layout, from
  `bigbench/benchmark_tasks/squad_shifts/new_wiki_v1.0.json`.

    python3 scripts/make_task_data.py                       # downloads the sdist with pip (358 MB)
    python3 scripts/make_task_data.py --sdist bigbench-1.0.0.tar.gz

The subsets are fixed: the first rows in file order (VitaminC: 600 train, then 100
validation; SQuADShifts: the questions of whole articles, 400 train, then 40 validation
from the following articles, skipping answers whose `answer_start` does not point at their
text). The output is checked against pinned sha256 sums. Standard library only.
"""
import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "assets" / "data"
PACKAGE = "bigbench==1.0.0"
SDIST = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"
LABELS = {"True": "SUPPORTS", "False": "REFUTES", "Neither": "NOT ENOUGH INFO"}
SHA256 = {
    "vitaminc/train": "6c0eeede8cd4602be7442367a17c676f0f4b43e5b932aa6eadf0cf2b05b3e3d2",
    "vitaminc/validation": "a1be526f8bff0c1826dddf75d040bb23a12befb79e38d5b09a152453b4e7e44a",
    "squadshifts-wiki/train": "3bda8307f4cbd4c4a8ff2c31123f046e631ab92bf130d3defe65f9fd8aff1db4",
    "squadshifts-wiki/validation": "3db5a934302df20832d8de5a5f1408269ab94617368343a662201e084d394fe1",
}


def vitaminc(task):
    rows = []
    for e in task["examples"]:
        evidence, claim = e["input"].split("\nClaim: ")
        label = LABELS[max(e["target_scores"], key=e["target_scores"].get)]
        rows.append({"text": evidence, "text_pair": claim, "label": label})
    return rows[:600], rows[600:700]


def squad_shifts(data):
    articles = []
    for article in data["data"]:
        rows = []
        for p in article["paragraphs"]:
            context = p["context"]
            for q in p["qas"]:
                answers = [a for a in q["answers"]
                           if context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]]
                if not answers:
                    continue
                rows.append({"id": q["id"], "question": q["question"], "context": context,
                             "answers": {"text": [a["text"] for a in answers],
                                         "answer_start": [a["answer_start"] for a in answers]}})
        articles.append(rows)
    train, validation = [], []
    for rows in articles:
        if len(train) < 400:
            train.extend(rows[: 400 - len(train)])
        elif len(validation) < 40:
            validation.extend(rows[: 40 - len(validation)])
    return train, validation


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"{path.relative_to(REPO)}: {len(rows)} rows, sha256 {digest}")
    return digest


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdist", type=Path, help=f"a downloaded {SDIST}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                            ":all:", "-d", tmp, PACKAGE], check=True)
            sdist = Path(tmp) / SDIST
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            sys.exit(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256}")
        with tarfile.open(sdist) as tf:
            load = lambda member: json.load(tf.extractfile(TASKS + member))
            pairs = vitaminc(load("vitaminc_fact_verification/task.json"))
            qa = squad_shifts(load("squad_shifts/new_wiki_v1.0.json"))
    for name, (train, validation) in [("vitaminc", pairs), ("squadshifts-wiki", qa)]:
        for split, rows in [("train", train), ("validation", validation)]:
            digest = write(OUT / name / f"{split}.jsonl", rows)
            expected = SHA256.get(f"{name}/{split}")
            if expected and digest != expected:
                sys.exit(f"{name}/{split}: sha256 {digest}, expected {expected}")


if __name__ == "__main__":
    main()
