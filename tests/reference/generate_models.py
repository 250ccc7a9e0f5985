#!/usr/bin/env python3
"""Tiny random checkpoints of every supported architecture, made with transformers, and
their outputs on fixed inputs; plus the outputs of the real all-MiniLM-L6-v2 (from
../shared) on a few sentences. CI reads the committed results; it never runs this.

    pip install torch transformers
    python3 tests/reference/generate_models.py

Writes tests/reference/models/<name>/ (config.json, model.safetensors) and
tests/reference/fixtures/models.json, minilm.json.
"""
import json
import pathlib
import shutil
import sys

import torch
import transformers
from transformers import (BertConfig, BertForSequenceClassification, BertModel, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, RobertaConfig, RobertaModel)

ROOT = pathlib.Path(__file__).resolve().parent
MODELS = ROOT / "models"
FIXTURES = ROOT / "fixtures"
SHARED = ROOT.parent.parent.parent / "shared" / "models" / "all-MiniLM-L6-v2"
VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}
torch.set_num_threads(1)


def flat(t):
    return [float(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


def save(model, name, **kwargs):
    out = MODELS / name
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    for extra in ["generation_config.json"]:
        (out / extra).unlink(missing_ok=True)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote models/{name} ({size} bytes)")
    return out


def encoder_case(name, model, ids, mask, types=None, checkpoint=None):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    case = {"name": name, "checkpoint": checkpoint or name, "shape": list(ids.shape),
            "input_ids": ids.reshape(-1).tolist(), "attention_mask": mask.reshape(-1).tolist(),
            "last_hidden_state": flat(out.last_hidden_state),
            "pooler_output": flat(out.pooler_output) if out.pooler_output is not None else None}
    if types is not None:
        case["token_type_ids"] = types.reshape(-1).tolist()
    return case


def decoder_case(name, model, ids, mask, checkpoint=None, generate=True):
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    case = {"name": name, "checkpoint": checkpoint or name, "shape": list(ids.shape),
            "input_ids": ids.reshape(-1).tolist(), "attention_mask": mask.reshape(-1).tolist(),
            "logits": flat(logits), "vocab": logits.shape[-1]}
    if generate:
        prompt = ids[:1, :5]
        with torch.no_grad():
            gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                                 do_sample=False, pad_token_id=0)
        case["greedy_prompt"] = prompt.reshape(-1).tolist()
        case["greedy_tokens"] = gen[0, prompt.shape[1]:].tolist()
    return case


def main():
    MODELS.mkdir(exist_ok=True)
    FIXTURES.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    cases = []

    # BERT, right-padded batch with token types.
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
    bert = BertModel(cfg)
    save(bert, "bert-tiny")
    ids = torch.randint(2, 99, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids = ids * mask
    types = torch.zeros_like(ids)
    types[0, 4:] = 1
    cases.append(encoder_case("bert-tiny", bert, ids, mask, types))

    # The same weights stored as bfloat16: loaded back in float32 by both sides.
    save(bert.to(torch.bfloat16), "bert-tiny-bf16")
    bert_bf16 = BertModel.from_pretrained(MODELS / "bert-tiny-bf16", dtype=torch.float32)
    cases.append(encoder_case("bert-tiny-bf16", bert_bf16, ids, mask, types))

    # A task checkpoint: backbone under `bert.`, plus a classifier the encoder ignores.
    torch.manual_seed(2)
    cls = BertForSequenceClassification(BertConfig(**{**cfg.to_dict(), "num_labels": 3}))
    save(cls, "bert-tiny-cls")
    cases.append(encoder_case("bert-tiny-cls (backbone)", cls.bert, ids, mask, types, checkpoint="bert-tiny-cls"))

    # RoBERTa: positions from padding_idx + 1, one token type.
    torch.manual_seed(3)
    rcfg = RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=66, type_vocab_size=1,
                         pad_token_id=1, hidden_act="gelu")
    roberta = RobertaModel(rcfg)
    save(roberta, "roberta-tiny")
    rids = torch.randint(3, 99, (3, 9), generator=gen)
    rmask = torch.ones_like(rids)
    rmask[1, 5:] = 0
    rids = torch.where(rmask == 1, rids, torch.ones_like(rids))
    cases.append(encoder_case("roberta-tiny", roberta, rids, rmask))

    # Llama with grouped-query attention, untied head.
    torch.manual_seed(4)
    lcfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    llama = LlamaForCausalLM(lcfg)
    save(llama, "llama-tiny-gqa")
    save(llama, "llama-tiny-sharded", max_shard_size="20KB")
    lids = torch.randint(2, 97, (2, 10), generator=gen)
    lmask = torch.ones_like(lids)
    lmask[1, 7:] = 0
    cases.append(decoder_case("llama-tiny-gqa", llama, lids, lmask))
    cases.append(decoder_case("llama-tiny-sharded", llama, lids, lmask, generate=False))
    left = torch.ones_like(lids)
    left[1, :3] = 0
    cases.append(decoder_case("llama-tiny-gqa left-padded", llama, lids, left, checkpoint="llama-tiny-gqa",
                              generate=False))

    # Llama, tied embeddings, multi-query attention, another theta and eps.
    torch.manual_seed(5)
    tcfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    tied = LlamaForCausalLM(tcfg)
    save(tied, "llama-tiny-tied")
    cases.append(decoder_case("llama-tiny-tied", tied, lids, lmask))

    # Qwen2: biases on q/k/v.
    torch.manual_seed(6)
    qcfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       tie_word_embeddings=True, rope_theta=1000000.0)
    qwen = Qwen2ForCausalLM(qcfg)
    with torch.no_grad():
        for layer in qwen.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.02)
    save(qwen, "qwen2-tiny")
    cases.append(decoder_case("qwen2-tiny", qwen, lids, lmask))

    # Mistral with a sliding window shorter than the sequence.
    torch.manual_seed(7)
    mcfg = MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         sliding_window=4, tie_word_embeddings=False)
    mistral = MistralForCausalLM(mcfg)
    save(mistral, "mistral-tiny-window")
    cases.append(decoder_case("mistral-tiny-window", mistral, lids, lmask, generate=False))

    path = FIXTURES / "models.json"
    path.write_text(json.dumps({"versions": VERSIONS, "cases": cases}) + "\n")
    print(f"wrote fixtures/models.json ({path.stat().st_size} bytes)")

    if SHARED.is_dir():
        tok = transformers.AutoTokenizer.from_pretrained(SHARED)
        model = BertModel.from_pretrained(SHARED)
        sentences = [
            "The movie was a quiet, moving portrait of a family.",
            "Terrible pacing.",
            "I would happily watch this again with friends on a rainy afternoon.",
            "Neither funny nor sad, just long.",
        ]
        enc = tok(sentences, padding=True, return_tensors="pt")
        case = encoder_case("all-MiniLM-L6-v2", model, enc["input_ids"], enc["attention_mask"],
                            enc["token_type_ids"])
        case["sentences"] = sentences
        path = FIXTURES / "minilm.json"
        path.write_text(json.dumps({"versions": VERSIONS, **case}) + "\n")
        print(f"wrote fixtures/minilm.json ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
