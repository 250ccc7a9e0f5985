#!/usr/bin/env python3
"""Task-head checkpoints (BERT and RoBERTa, sequence and token classification) made with
transformers, and their logits on fixed inputs, for tests/tests/head_parity.rs. CI reads
the committed results; it never runs this.

    pip install torch transformers
    python3 tests/reference/generate_heads.py

Writes tests/reference/models/<name>/ and tests/reference/fixtures/heads.json.
"""
import json
import pathlib
import shutil

import torch
from transformers import (BertConfig, BertForSequenceClassification, BertForTokenClassification,
                          RobertaConfig, RobertaForSequenceClassification,
                          RobertaForTokenClassification)

ROOT = pathlib.Path(__file__).resolve().parent
MODELS = ROOT / "models"
torch.set_num_threads(1)


def save(model, name):
    out = MODELS / name
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    print(f"wrote models/{name}")


def case(name, model, ids, mask):
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    return {"name": name, "shape": list(ids.shape), "input_ids": ids.reshape(-1).tolist(),
            "attention_mask": mask.reshape(-1).tolist(), "logits_shape": list(logits.shape),
            "logits": [float(x) for x in logits.reshape(-1).tolist()]}


def main():
    gen = torch.Generator().manual_seed(11)
    bert = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64, pad_token_id=0)
    roberta = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=37, max_position_embeddings=66, type_vocab_size=1,
                   pad_token_id=1)
    ids = torch.randint(3, 99, (3, 8), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    bert_ids = torch.where(mask == 1, ids, torch.zeros_like(ids))
    roberta_ids = torch.where(mask == 1, ids, torch.ones_like(ids))
    labels = {"id2label": {0: "neg", 1: "neu", 2: "pos"}, "label2id": {"neg": 0, "neu": 1, "pos": 2}}
    cases = []
    for seed, name, cls, cfg, x in [
        (21, "bert-tiny-seqcls", BertForSequenceClassification, BertConfig(**bert, **labels), bert_ids),
        (22, "bert-tiny-tokcls", BertForTokenClassification, BertConfig(**bert, num_labels=5), bert_ids),
        (23, "roberta-tiny-seqcls", RobertaForSequenceClassification, RobertaConfig(**roberta, **labels), roberta_ids),
        (24, "roberta-tiny-tokcls", RobertaForTokenClassification, RobertaConfig(**roberta, num_labels=5), roberta_ids),
    ]:
        torch.manual_seed(seed)
        model = cls(cfg)
        # Non-zero head biases, so a bias that fails to load shows.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "classifier" in n and n.endswith("bias"):
                    p.normal_(0, 0.5)
        save(model, name)
        cases.append(case(name, model, x, mask))
    (ROOT / "fixtures" / "heads.json").write_text(json.dumps(
        {"torch": torch.__version__, "cases": cases}, indent=1))
    print("wrote fixtures/heads.json")


if __name__ == "__main__":
    main()
