#!/usr/bin/env python3
"""A SentencePiece-style (Unigram, Metaspace) tokenizer with DeBERTa-v3's specials and pair
template, as DeBERTa-v3's and XLM-R's tokenizer.json files are built, and what
transformers' `DebertaV2TokenizerFast` makes of sentence pairs and QA windows with it.
CI reads the committed results; it never runs this.

    pip install torch transformers
    python3 tests/reference/generate_sentencepiece.py

Writes tests/assets/toy-deberta-tokenizer/tokenizer.json and
tests/reference/fixtures/sentencepiece.json (the `pairs` and `windows` of
generate_tasks.py's format, checked by tests/tests/head_parity.rs).
"""
import json
import pathlib

from tokenizers import SentencePieceUnigramTokenizer, processors
from transformers import DebertaV2TokenizerFast

import generate_tasks
from generate_models import FIXTURES, VERSIONS

REPO = pathlib.Path(__file__).resolve().parent.parent


def toy_deberta():
    corpus = [q for q, _, _ in generate_tasks.QA] + [c for _, c, _ in generate_tasks.QA]
    corpus += [a for a, _ in generate_tasks.PAIRS] + [b for _, b in generate_tasks.PAIRS]
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(corpus * 20, vocab_size=120, show_progress=False,
                            special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
                            unk_token="[UNK]")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    # DeBERTa-v3's template: [CLS] A [SEP] B [SEP], the second segment type 1.
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    out = REPO / "assets" / "toy-deberta-tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    print(f"wrote {out / 'tokenizer.json'}")
    return DebertaV2TokenizerFast(tokenizer_file=str(out / "tokenizer.json"), bos_token="[CLS]",
                                  eos_token="[SEP]", unk_token="[UNK]", sep_token="[SEP]",
                                  pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")


def main():
    toks = [("toy-deberta", toy_deberta())]
    fixture = {"versions": VERSIONS, "pairs": generate_tasks.pair_cases(toks),
               "windows": generate_tasks.window_cases(toks)}
    path = FIXTURES / "sentencepiece.json"
    path.write_text(json.dumps(fixture) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes): {len(fixture['pairs'])} pairs, "
          f"{sum(len(c['windows']) for c in fixture['windows'])} windows")


if __name__ == "__main__":
    main()
