#!/usr/bin/env python3
"""Turns the WNUT-16 tagging data of ../shared/data/wnut16 into a multi-label sentence
classification set: which of the 10 entity types occur in each tweet.

    python3 scripts/make_entity_types.py [--shared ../shared]

Writes data/wnut16-entity-types/{train,validation,test}.jsonl (ignored by git, like the
source it is made from: the tweets carry no licence of their own), one row per tweet:
`{"text": the words joined by spaces, "labels": [the entity types present, sorted]}`;
`[]` when the tweet names no entity. Used by examples/configs/minilm-wnut16-entity-types.toml.
"""
import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = parser.parse_args()
    out = REPO / "data" / "wnut16-entity-types"
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        rows = []
        for line in (args.shared / "data" / "wnut16" / f"{split}.jsonl").read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            types = sorted({t[2:] for t in row["tags"] if t != "O"})
            rows.append({"text": " ".join(row["tokens"]), "labels": types})
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{split}: {len(rows)} tweets, {sum(bool(r['labels']) for r in rows)} with entities")


if __name__ == "__main__":
    main()
