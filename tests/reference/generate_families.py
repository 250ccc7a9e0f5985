#!/usr/bin/env python3
"""Tiny random checkpoints of the newer model families, with each family's distinctive
options switched on, made with transformers; their outputs on fixed inputs, greedy
generation, and one training step. CI reads the committed results; it never runs this.

    pip install torch transformers
    python3 tests/reference/generate_families.py

Writes tests/reference/models/<name>/ (config.json, model.safetensors) and
tests/reference/fixtures/families.json. Cases have the shape of generate_models.py's
(tests/tests/model_parity.rs checks both files the same way), plus `step`: after one
forward with labels, backward, clip_grad_norm_(1.0) and AdamW (lr 1e-3, weight decay
0.01 except biases and norms), the loss, the gradient norm and watched parameters.
"""
import json
import pathlib

import torch
from transformers import (DebertaV2Config, DebertaV2ForQuestionAnswering,
                          DebertaV2ForSequenceClassification, DebertaV2ForTokenClassification,
                          DebertaV2Model, DistilBertConfig, DistilBertForSequenceClassification,
                          DistilBertModel, ModernBertForQuestionAnswering,
                          ModernBertForSequenceClassification, ModernBertForTokenClassification,
                          Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig,
                          LlamaConfig, LlamaForCausalLM, ModernBertConfig, ModernBertModel, Phi3Config,
                          Phi3ForCausalLM, Qwen3Config, Qwen3ForCausalLM, XLMRobertaConfig,
                          XLMRobertaModel)
from transformers.trainer_pt_utils import get_parameter_names

from generate_models import FIXTURES, VERSIONS, decoder_case, encoder_case, flat, save
from generate_tasks import one_step as head_step

torch.set_num_threads(1)

# Parameters compared after the step, where the model has them.
WATCHED = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.qkv_proj.weight",
    "model.layers.0.self_attn.q_norm.weight",
    "model.layers.0.self_attn.k_norm.weight",
    "model.layers.1.mlp.gate_up_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.1.pre_feedforward_layernorm.weight",
    "model.layers.1.post_feedforward_layernorm.weight",
    "model.layers.1.post_attention_layernorm.weight",
    "model.norm.weight",
]


def shorten(value):
    """Floats with 9 significant digits: every float32 exactly, a third of the bytes."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, list):
        return [shorten(v) for v in value]
    if isinstance(value, dict):
        return {k: shorten(v) for k, v in value.items()}
    return value


def one_step(model, ids, mask):
    """Causal-LM loss on the unpadded tokens, backward, clip 1.0, one AdamW step."""
    model.train()
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm],
                                    [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
    groups = [{"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3, foreach=False)
    labels = torch.where(mask == 1, ids, torch.full_like(ids, -100))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    opt.step()
    state = dict(model.named_parameters())
    model.eval()
    return {"labels": labels.reshape(-1).tolist(), "loss": float(out.loss), "grad_norm": norm,
            "after": {n: state[n].detach().reshape(-1).tolist() for n in WATCHED if n in state}}


def encoder(cases, name, model, ids, mask, types=None):
    """An encoder's last hidden state on a padded batch (token types only where given)."""
    save(model, name)
    model.eval()
    extra = {} if types is None else {"token_type_ids": types}
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, **extra)
    case = {"name": name, "checkpoint": name, "shape": list(ids.shape),
            "input_ids": ids.reshape(-1).tolist(), "attention_mask": mask.reshape(-1).tolist(),
            "last_hidden_state": flat(out.last_hidden_state), "pooler_output": None}
    if types is not None:
        case["token_type_ids"] = types.reshape(-1).tolist()
    cases.append(case)


def randomize_norms(model, std):
    """Norm weights away from their constant init, so that `(1 + w)` against `w` shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, std)


def decoder(cases, name, model, ids, mask):
    model.eval()
    save(model, name)
    case = decoder_case(name, model, ids, mask)
    case["step"] = one_step(model, ids, mask)
    cases.append(case)


def task_heads(gen):
    """One training step of each new family's task heads, as tests/tests/trainer_parity.rs
    checks generate_tasks.py's: dropout 0, labels of every kind."""
    ids = torch.randint(3, 99, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    ids = ids * mask
    zeros = torch.zeros_like(ids)
    tags = torch.randint(0, 4, (3, 12), generator=gen).masked_fill(mask == 0, -100)
    spans = {"start_positions": torch.tensor([5, 0, 4]), "end_positions": torch.tensor([7, 0, 6])}
    enc = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=64, pad_token_id=0, initializer_range=0.1)
    deberta = dict(**enc, relative_attention=True, position_buckets=6, max_relative_positions=24,
                   pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                   position_biased_input=False, type_vocab_size=0, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0)
    modern = dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, cls_token_id=1, sep_token_id=2, global_attn_every_n_layers=2,
                  local_attention=4, initializer_range=0.1, attn_implementation="eager")
    backbone = ["distilbert.transformer.layer.0.attention.q_lin.weight", "pre_classifier.weight",
                "deberta.encoder.layer.0.attention.self.query_proj.weight",
                "deberta.encoder.rel_embeddings.weight", "pooler.dense.weight",
                "model.layers.1.attn.Wo.weight", "head.dense.weight", "head.norm.weight"]
    heads = "classifier.weight", "classifier.bias", "qa_outputs.weight"
    cases = []
    for seed, name, cls, cfg, labels in [
        (41, "distilbert-tiny-multilabel", DistilBertForSequenceClassification,
         DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64,
                          pad_token_id=0, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0,
                          num_labels=3, problem_type="multi_label_classification"),
         {"labels": torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}),
        (42, "deberta-v3-tiny-seqcls", DebertaV2ForSequenceClassification,
         DebertaV2Config(**deberta, num_labels=3), {"labels": torch.tensor([2, 0, 1])}),
        (43, "deberta-v3-tiny-tokcls", DebertaV2ForTokenClassification,
         DebertaV2Config(**deberta, num_labels=4), {"labels": tags}),
        (44, "deberta-v3-tiny-qa", DebertaV2ForQuestionAnswering, DebertaV2Config(**deberta), spans),
        (45, "modernbert-tiny-seqcls-mean", ModernBertForSequenceClassification,
         ModernBertConfig(**modern, classifier_pooling="mean", num_labels=3),
         {"labels": torch.tensor([1, 2, 0])}),
        (46, "modernbert-tiny-tokcls", ModernBertForTokenClassification,
         ModernBertConfig(**modern, classifier_bias=True, num_labels=4), {"labels": tags}),
        (47, "modernbert-tiny-qa", ModernBertForQuestionAnswering, ModernBertConfig(**modern), spans),
    ]:
        torch.manual_seed(seed)
        model = cls(cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ("classifier" in n or "qa_outputs" in n) and n.endswith("bias"):
                    p.normal_(0, 0.5)
        save(model, name)
        # A span head's bias gets no gradient in exact arithmetic (each softmax ignores a
        # shift shared by all positions): ModernBERT names that layer `classifier`.
        watched = [n for n in backbone + list(heads) if not (name.endswith("-qa") and n == "classifier.bias")]
        cases.append(head_step(name, model, ids, mask, zeros, labels, watched))
    return cases


def main():
    gen = torch.Generator().manual_seed(20)
    cases = []
    ids = torch.randint(3, 97, (2, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    small = dict(vocab_size=97, hidden_size=32, intermediate_size=48, max_position_embeddings=128,
                 num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager",
                 pad_token_id=0, bos_token_id=1, eos_token_id=2)

    # Qwen3: per-head q/k RMSNorm, head_dim not hidden/heads, a sliding window from layer 1.
    torch.manual_seed(21)
    cfg = Qwen3Config(**small, num_hidden_layers=2, head_dim=12, tie_word_embeddings=True,
                      use_sliding_window=True, sliding_window=4, max_window_layers=1,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    model = Qwen3ForCausalLM(cfg)
    randomize_norms(model, 0.3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.add_(1.0)
            layer.self_attn.k_norm.weight.add_(1.0)
    decoder(cases, "qwen3-tiny", model, ids, mask)

    # Phi-3: fused qkv and gate/up projections, half the head rotated, a window on every layer.
    torch.manual_seed(22)
    cfg = Phi3Config(**small, num_hidden_layers=2, sliding_window=5,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                      "partial_rotary_factor": 0.5})
    decoder(cases, "phi3-tiny", Phi3ForCausalLM(cfg), ids, mask)

    # Gemma 2: (1 + w) norms around both sub-layers, GeGLU, √hidden embeddings, a query
    # scale of its own, soft caps small enough to bite, a window on alternate layers.
    torch.manual_seed(23)
    cfg = Gemma2Config(**small, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24,
                       sliding_window=3, attn_logit_softcapping=0.8, final_logit_softcapping=1.5,
                       initializer_range=0.2)
    model = Gemma2ForCausalLM(cfg)
    randomize_norms(model, 0.3)
    decoder(cases, "gemma2-tiny", model, ids, mask)

    # Gemma 3: q/k norms, explicit layer types, linear-scaled global rope and a local base.
    torch.manual_seed(24)
    cfg = Gemma3TextConfig(**small, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=20,
                           sliding_window=3, final_logit_softcapping=1.5, initializer_range=0.2,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           rope_parameters={
                               "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})
    model = Gemma3ForCausalLM(cfg)
    randomize_norms(model, 0.3)
    decoder(cases, "gemma3-tiny", model, ids, mask)

    # Llama 3.x rope scaling (Llama 3.2 1B/3B): low frequencies divided, a smoothed band.
    torch.manual_seed(25)
    cfg = LlamaConfig(**small, num_hidden_layers=2, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 16})
    decoder(cases, "llama3-rope-tiny", LlamaForCausalLM(cfg), ids, mask)

    # XLM-RoBERTa: RoBERTa's architecture under its own model_type.
    torch.manual_seed(26)
    cfg = XLMRobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=66, type_vocab_size=1,
                           pad_token_id=1)
    model = XLMRobertaModel(cfg)
    save(model, "xlm-roberta-tiny")
    rids = torch.randint(3, 99, (2, 9), generator=gen)
    rmask = torch.ones_like(rids)
    rmask[1, 6:] = 0
    rids = torch.where(rmask == 1, rids, torch.ones_like(rids))
    cases.append(encoder_case("xlm-roberta-tiny", model, rids, rmask))

    # Encoders on a longer padded batch: relative distances beyond DeBERTa's buckets and
    # ModernBERT's local window; weights large enough (std 0.3) that attention patterns,
    # and so every position term, move the outputs by far more than the tolerance.
    eids = torch.randint(3, 99, (3, 14), generator=gen)
    emask = torch.ones_like(eids)
    emask[1, 9:] = 0
    emask[2, 4:] = 0
    eids = eids * emask
    etypes = torch.zeros_like(eids)
    etypes[0, 6:] = 1
    enc = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=64, pad_token_id=0,
               initializer_range=0.3)

    # DistilBERT: BERT's layers under other names, no token types.
    torch.manual_seed(27)
    cfg = DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                           max_position_embeddings=64, pad_token_id=0)
    encoder(cases, "distilbert-tiny", DistilBertModel(cfg), eids, emask)

    # DeBERTa-v3: relative attention in log buckets, c2p + p2c through shared keys,
    # normalized relative embeddings, no absolute positions, no token types.
    torch.manual_seed(28)
    cfg = DebertaV2Config(**enc, relative_attention=True, position_buckets=8, max_relative_positions=32,
                          pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                          position_biased_input=False, type_vocab_size=0, hidden_act="gelu")
    model = DebertaV2Model(cfg)
    randomize_norms(model, 0.3)
    encoder(cases, "deberta-v3-tiny", model, eids, emask)

    # DeBERTa-v2 style: separate position projections, absolute positions, token types,
    # a narrow relative span that clamps, the legacy "c2p|p2c" string.
    torch.manual_seed(29)
    cfg = DebertaV2Config(**enc, relative_attention=True, max_relative_positions=5, pos_att_type="c2p|p2c",
                          share_att_key=False, position_biased_input=True, type_vocab_size=2)
    encoder(cases, "deberta-v2-tiny", DebertaV2Model(cfg), eids, emask, etypes)

    # ModernBERT: global attention every 2 layers, a 4-token local window, two rotary bases.
    torch.manual_seed(30)
    cfg = ModernBertConfig(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                           num_attention_heads=4, max_position_embeddings=64, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                           global_attn_every_n_layers=2, local_attention=4, initializer_range=0.3,
                           rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
                           attn_implementation="eager")
    model = ModernBertModel(cfg)
    randomize_norms(model, 0.3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(1.0)
    encoder(cases, "modernbert-tiny", model, eids, emask)

    heads = task_heads(gen)
    path = FIXTURES / "families.json"
    path.write_text(json.dumps(shorten({"versions": VERSIONS, "cases": cases, "heads": heads})) + "\n")
    print(f"wrote fixtures/families.json ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
