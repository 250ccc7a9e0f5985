#!/usr/bin/env python3
"""Toy Hugging Face model directories and data sets for fast end-to-end tests of the
`burnish` command (train, eval, predict) in CI: a tiny random BERT and a tiny random Llama,
each with a word-level tokenizer made by the `tokenizers` library, and toy task data
(sentiment words, BIO tags, instruction pairs and chat messages). Deterministic (fixed
seeds); CI reads the committed output and never runs this.

    pip install torch transformers
    python3 tests/reference/generate_toy.py

Writes tests/assets/{toy-bert,toy-llama}/ and tests/assets/data/{toy-sentiment,toy-ner,toy-sft}/.
"""
import json
import pathlib
import random
import shutil

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "assets"
DATA = ROOT / "data"

POSITIVE = "good great fine superb lovely brilliant wonderful moving".split()
NEGATIVE = "bad awful dull boring weak poor dreadful tedious".split()
FILLER = "the film was a movie plot and acting story it is really quite".split()
PEOPLE = "alice bob carol dave".split()
PLACES = "paris london rome oslo".split()
VERBS = "met visited saw left".split()
COLORS = "red green blue black white".split()
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")


def word_tokenizer(specials, words, post=None):
    vocab = {t: i for i, t in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if post is not None:
        tok.post_processor = post(vocab)
    tok.add_special_tokens(specials)
    return tok, len(vocab)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {path.relative_to(ROOT.parent)} ({len(rows)} rows)")


def fresh(name):
    out = ROOT / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def toy_bert():
    words = POSITIVE + NEGATIVE + FILLER + PEOPLE + PLACES + VERBS + ["in", "to", "."]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok, vocab = word_tokenizer(specials, words, lambda v: processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", v["[CLS]"]), ("[SEP]", v["[SEP]"])]))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        pad_token_id=0)
    out = fresh("toy-bert")
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
         "cls_token": "[CLS]", "sep_token": "[SEP]", "model_max_length": 64}, indent=2))
    print(f"wrote assets/toy-bert (vocab {vocab})")

    rng = random.Random(1)

    def review():
        label = rng.randrange(2)
        key = rng.choice(POSITIVE if label else NEGATIVE)
        words = [rng.choice(FILLER) for _ in range(rng.randrange(2, 8))]
        words.insert(rng.randrange(len(words) + 1), key)
        return {"text": " ".join(words), "label": ["negative", "positive"][label]}

    write_jsonl(DATA / "toy-sentiment/train.jsonl", [review() for _ in range(256)])
    write_jsonl(DATA / "toy-sentiment/validation.jsonl", [review() for _ in range(64)])

    def sentence():
        who, verb, where = rng.choice(PEOPLE), rng.choice(VERBS), rng.choice(PLACES)
        other = rng.choice(PEOPLE)
        tokens = [who, verb, other, "in", where, "."]
        tags = ["B-PER", "O", "B-PER", "O", "B-LOC", "O"]
        return {"tokens": tokens, "tags": tags}

    write_jsonl(DATA / "toy-ner/train.jsonl", [sentence() for _ in range(256)])
    write_jsonl(DATA / "toy-ner/validation.jsonl", [sentence() for _ in range(64)])


def toy_llama():
    words = COLORS + ["what", "is", "the", "color", "of", "sky", "grass", "snow", "coal", "fire",
                      "name", "a", "say", "hello", "hi", "there", "?", "!"]
    specials = ["<|endoftext|>", "[UNK]", "<|im_start|>", "<|im_end|>", "user", "assistant",
                "system"]
    tok, vocab = word_tokenizer(specials, words)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                         max_position_embeddings=64, bos_token_id=None, eos_token_id=3,
                         pad_token_id=0, tie_word_embeddings=True)
    out = fresh("toy-llama")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
         "pad_token": "<|endoftext|>", "unk_token": "[UNK]", "chat_template": CHATML},
        indent=2))
    print(f"wrote assets/toy-llama (vocab {vocab})")

    facts = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "fire": "red"}
    rows = [{"prompt": f"what is the color of {thing} ?", "response": color}
            for thing, color in facts.items()]
    rows += [{"messages": [{"role": "user", "content": "say hello"},
                           {"role": "assistant", "content": "hello there !"}]},
             {"messages": [{"role": "system", "content": "hi"},
                           {"role": "user", "content": "name a color"},
                           {"role": "assistant", "content": "blue"}]}]
    write_jsonl(DATA / "toy-sft/train.jsonl", rows)
    write_jsonl(DATA / "toy-sft/validation.jsonl", rows)


if __name__ == "__main__":
    toy_bert()
    toy_llama()
