#!/usr/bin/env python3
"""Builds the compact quick-start encoder shipped in assets/minilm-compact/.

It is all-MiniLM-L6-v2 (Apache-2.0) cut down so the repository can carry a real pretrained
model: only the first N encoder layers, only the vocabulary the sentiment data uses, and
float16 storage. The data decides the vocabulary, so the compact tokenizer gives exactly the
original's tokens on that data (checked below); other text may split into more, shorter
pieces or [UNK].

    python3 scripts/make_compact_minilm.py            # defaults: ../shared inputs, --layers 3
    python3 scripts/make_compact_minilm.py --src DIR --data a.jsonl b.jsonl --layers 2 --out DIR

Needs torch, safetensors, tokenizers and (for the fidelity check) transformers. The output
is deterministic: running it twice with the same inputs gives byte-identical files.
"""
import argparse
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FIDELITY_SENTENCES = 32
FIDELITY_LIMIT = 1e-2


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=SHARED / "models/all-MiniLM-L6-v2",
                   help="the original Hugging Face directory")
    p.add_argument("--data", type=Path, nargs="+",
                   default=[SHARED / f"data/rotten_tomatoes/{s}.jsonl"
                            for s in ("train", "validation", "test")],
                   help="jsonl files with a `text` field; their tokens make the vocabulary")
    p.add_argument("--layers", type=int, default=3, help="keep the first N encoder layers")
    p.add_argument("--out", type=Path, default=REPO / "assets/minilm-compact")
    return p


def rel(path):
    """A path as the README shows it: relative to the repository root."""
    return os.path.relpath(Path(path).resolve(), REPO)


def read_texts(files):
    texts = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            texts += [json.loads(line)["text"] for line in fh if line.strip()]
    return texts


def raw_tokenizer(tok_json):
    """The tokenizer without the file's fixed padding/truncation to 128, so every token of
    every text counts."""
    tok = Tokenizer.from_str(tok_json)
    tok.no_padding()
    tok.no_truncation()
    return tok


def dump_json(obj, path):
    """Sorted keys, so the bytes do not depend on dict order."""
    text = json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")


def shrink_tokenizer(src, texts, out):
    """Writes the tokenizer with only the tokens `texts` use; returns the kept old ids in
    their original order (new id = position in the list)."""
    tok_json = (src / "tokenizer.json").read_text(encoding="utf-8")
    spec = json.loads(tok_json)
    model = spec["model"]
    if model["type"] != "WordPiece":
        sys.exit(f"expected a WordPiece tokenizer, got {model['type']}")
    vocab = model["vocab"]

    old = raw_tokenizer(tok_json)
    old_enc = old.encode_batch(texts)
    used = {i for e in old_enc for i in e.ids}
    used |= {vocab[t] for t in SPECIALS if t in vocab}
    used |= {t["id"] for t in spec.get("added_tokens", [])}
    kept = sorted(used)
    remap = {o: n for n, o in enumerate(kept)}
    if vocab.get("[PAD]") == 0 and remap[0] != 0:
        sys.exit("[PAD] must keep id 0")

    by_id = {i: t for t, i in vocab.items()}
    model["vocab"] = {by_id[o]: remap[o] for o in kept}
    for added in spec.get("added_tokens", []):
        added["id"] = remap[added["id"]]
    if spec.get("padding"):
        spec["padding"]["pad_id"] = remap[spec["padding"]["pad_id"]]
    post = spec.get("post_processor")
    if post:
        if post["type"] != "TemplateProcessing":
            sys.exit(f"unhandled post_processor {post['type']}: its token ids need remapping")
        for special in post["special_tokens"].values():
            special["ids"] = [remap[i] for i in special["ids"]]
    # Compact and in the original key order, as `tokenizers` writes it.
    new_json = json.dumps(spec, ensure_ascii=False, separators=(",", ":"))
    (out / "tokenizer.json").write_text(new_json, encoding="utf-8")

    # Exactness: normalization and pre-tokenization do not depend on the vocabulary, and
    # WordPiece splits each word greedily, taking at each position the longest piece that is
    # in the vocabulary. On these texts every piece the original took is kept, and no longer
    # piece can appear in a subset of the original vocabulary, so the compact tokenizer takes
    # the same pieces. (A word the original turned into [UNK] is the one case the argument
    # does not cover, as its abandoned pieces are not kept; the check below covers it.)
    new = raw_tokenizer(new_json)
    for text, a, b in zip(texts, old_enc, new.encode_batch(texts)):
        if a.tokens != b.tokens or [remap[i] for i in a.ids] != b.ids:
            sys.exit(f"compact tokenizer differs from the original on: {text!r}")

    if (src / "vocab.txt").exists():
        lines = (src / "vocab.txt").read_text(encoding="utf-8").splitlines()
        if lines != [by_id[i] for i in range(len(lines))]:
            sys.exit("vocab.txt and tokenizer.json disagree")
        (out / "vocab.txt").write_text("".join(by_id[o] + "\n" for o in kept), encoding="utf-8")

    # `name_or_path` names the original repository, which this is not; nothing in these
    # files refers to a file the compact directory lacks.
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            cfg = json.loads((src / name).read_text(encoding="utf-8"))
            cfg.pop("name_or_path", None)
            dump_json(cfg, out / name)
    return kept


def shrink_weights(src, kept, layers, out):
    """Writes model.safetensors (float16) and config.json; returns the parameter count."""
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    with safe_open(src / "model.safetensors", "pt") as f:
        names = list(f.keys())
        # Keep the checkpoint's own naming: with or without the `bert.` prefix.
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in names else ""
        keep = [prefix + "embeddings." + n for n in (
            "word_embeddings.weight", "position_embeddings.weight",
            "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias")]
        keep += [n for n in names
                 if n.startswith(prefix + "pooler.")
                 or any(n.startswith(f"{prefix}encoder.layer.{i}.") for i in range(layers))]
        # Dropped: the other layers, and `embeddings.position_ids`, an int64 buffer that
        # transformers rebuilds and no longer saves.
        tensors = {}
        for name in keep:
            t = f.get_tensor(name)
            if name.endswith("word_embeddings.weight"):
                t = t[torch.tensor(kept)]
            t = t.to(torch.float16).contiguous()
            if not torch.isfinite(t).all():
                sys.exit(f"{name} overflows float16")
            tensors[name] = t
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})

    config.pop("_name_or_path", None)
    config["num_hidden_layers"] = layers
    config["vocab_size"] = len(kept)
    dump_json(config, out / "config.json")
    return sum(t.numel() for t in tensors.values())


def fidelity(src, out, layers, texts, kept):
    """Max |Δ| of the compact model against the original truncated to the same layers, both
    run in float32; the difference is the float16 rounding of the weights."""
    from transformers import BertModel
    from transformers.utils import logging
    logging.set_verbosity_error()  # the unused layers of the original are expected
    logging.disable_progress_bar()

    step = max(1, len(texts) // FIDELITY_SENTENCES)
    sample = texts[::step][:FIDELITY_SENTENCES]
    remap = torch.full((max(kept) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(kept)] = torch.arange(len(kept))
    tok = raw_tokenizer((src / "tokenizer.json").read_text(encoding="utf-8"))
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"))
    enc = tok.encode_batch(sample)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with safe_open(out / "model.safetensors", "pt") as f:
        pooler = any(".pooler." in "." + n for n in f.keys())
    ref = BertModel.from_pretrained(src, num_hidden_layers=layers, add_pooling_layer=pooler)
    cmp = BertModel.from_pretrained(out, add_pooling_layer=pooler)
    with torch.no_grad():
        a = ref.float().eval()(input_ids=ids, attention_mask=mask)
        b = cmp.float().eval()(input_ids=remap[ids], attention_mask=mask)
    real = mask.bool()
    hidden = (a.last_hidden_state - b.last_hidden_state)[real].abs().max().item()
    pooled = (a.pooler_output - b.pooler_output).abs().max().item() if pooler else None
    return hidden, pooled, len(sample)


README = """\
# minilm-compact

A compact derivative of [sentence-transformers/all-MiniLM-L6-v2](https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2)
(Apache-2.0, see `NOTICE`): burnish's quick-start model, small enough to ship in the
repository so the default run needs no download. It is meant for trying burnish out on
the sentiment data from `scripts/fetch_sentiment_data.py` in minutes on a CPU, not for
quality: use the original model for real work.

Made by `scripts/make_compact_minilm.py` from the original's files (`model.safetensors`
sha256 `{src_sha}`):

    python3 scripts/make_compact_minilm.py {command}

What changed from the original:

- encoder: the first {layers} of its {src_layers} layers (embeddings and pooler unchanged);
- vocabulary: {k} of {src_vocab} WordPiece tokens, the special tokens and those the
  texts of the data files below use, in their original order (`[PAD]` is still 0);
  `word_embeddings` keeps the matching rows. On those texts the tokenizer gives exactly
  the original's tokens; other text may split into more, shorter pieces or `[UNK]`;
- weights stored as float16 ({params:,} parameters); `config.json` has
  `num_hidden_layers = {layers}` and `vocab_size = {k}`, and loads in transformers'
  `BertModel` as is.

Against the original cut to the same {layers} layers, on {n} sentences of the data, both
run in float32: max |Δ last_hidden_state| = {hidden:.1e}{pooled}.

Data files (rotten_tomatoes by default, see `scripts/fetch_sentiment_data.py`):

{data}
"""

NOTICE = """\
This directory holds a modified version of sentence-transformers/all-MiniLM-L6-v2
(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2), licensed under the
Apache License, Version 2.0; the licence text is the first text in LICENSE at the root
of this repository, and at https://www.apache.org/licenses/LICENSE-2.0.

Modifications (scripts/make_compact_minilm.py, described in README.md): encoder layers
removed, vocabulary reduced to the tokens of a sentiment data set, weights converted to
float16. Distributed on an "AS IS" basis, without warranties or conditions of any kind.
"""


def main():
    parser = build_parser()
    args, defaults = parser.parse_args(), parser.parse_args([])
    src_config = json.loads((args.src / "config.json").read_text(encoding="utf-8"))
    if not 1 <= args.layers <= src_config["num_hidden_layers"]:
        parser.error(f"--layers must be in 1..{src_config['num_hidden_layers']}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    texts = read_texts(args.data)

    kept = shrink_tokenizer(args.src, texts, args.out)
    params = shrink_weights(args.src, kept, args.layers, args.out)
    hidden, pooled, n = fidelity(args.src, args.out, args.layers, texts, kept)

    # The README's command names only the options that differ from the defaults.
    command = ["--layers", str(args.layers)]
    for flag in ("src", "out"):
        if getattr(args, flag).resolve() != getattr(defaults, flag).resolve():
            command += [f"--{flag}", rel(getattr(args, flag))]
    if [p.resolve() for p in args.data] != [p.resolve() for p in defaults.data]:
        command += ["--data"] + [rel(p) for p in args.data]
    src_sha = hashlib.sha256((args.src / "model.safetensors").read_bytes()).hexdigest()
    pooled = "" if pooled is None else f", max |Δ pooler_output| = {pooled:.1e}"
    (args.out / "README.md").write_text(README.format(
        src_sha=src_sha, command=shlex.join(command), layers=args.layers,
        src_layers=src_config["num_hidden_layers"], k=len(kept),
        src_vocab=src_config["vocab_size"], data="".join(f"    {rel(p)}\n" for p in args.data).rstrip("\n"),
        params=params, n=n, hidden=hidden, pooled=pooled), encoding="utf-8")
    (args.out / "NOTICE").write_text(NOTICE, encoding="utf-8")

    print(f"vocabulary: {len(kept)} tokens; layers: {args.layers}; parameters: {params:,}")
    total = 0
    for f in sorted(args.out.iterdir()):
        total += f.stat().st_size
        print(f"  {f.name:24} {f.stat().st_size:>12,} bytes")
    print(f"  {'total':24} {total:>12,} bytes")
    print(f"fidelity on {n} sentences: max |Δ last_hidden_state| = {hidden:.2e}{pooled}")
    if not hidden < FIDELITY_LIMIT:
        sys.exit(f"fidelity check failed: {hidden:.2e} >= {FIDELITY_LIMIT}")


if __name__ == "__main__":
    main()
