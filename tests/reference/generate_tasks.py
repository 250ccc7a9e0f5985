#!/usr/bin/env python3
"""References for the task set-ups of issue 14, made with transformers, for
tests/tests/task_parity.rs. CI reads the committed results; it never runs this.

    pip install torch transformers
    pip download --no-deps -d /tmp/tf4 transformers==4.46.3   # for the SQuAD scorer
    python3 tests/reference/generate_tasks.py /tmp/tf4/transformers-4.46.3-py3-none-any.whl

Writes:
- tests/reference/models/{bert-tiny-regression, bert-tiny-multilabel, bert-tiny-qa,
  roberta-tiny-qa}/: tiny random heads (non-zero head biases);
- tests/assets/toy-roberta-tokenizer/tokenizer.json: a byte-level BPE tokenizer with
  RoBERTa's pair template, trained here on a few sentences;
- tests/reference/fixtures/tasks.json:
  * heads: per model, inputs (ids, mask, segment ids of a sentence pair), labels, the
    logits and loss of the forward pass, and, after one training step (dropout off,
    clip_grad_norm_ 1.0, AdamW lr 1e-3 weight decay 0.01 without biases and LayerNorm
    weights), the grad norm and the updated values of a few parameters;
  * pairs: `tokenizer(text, text_pair, truncation=True, max_length=...)` (longest_first)
    with the compact MiniLM tokenizer (BERT template) and the toy RoBERTa one;
  * windows: `tokenizer(question, context, truncation="only_second", max_length,
    stride, return_overflowing_tokens=True, return_offsets_mapping=True)` per window:
    ids, segment ids, the context tokens' character offsets, and the answer's start and
    end tokens found as transformers' run_qa finds them;
  * squad: crafted (prediction, gold answers) cases scored by the SQuAD v2 functions of
    transformers 4.46's `data/metrics/squad_metrics.py` (its normalization, exact match
    and F1; an unanswerable question has the gold answer "").
"""
import json
import pathlib
import re
import shutil
import sys
import zipfile

import torch
import transformers
from tokenizers import ByteLevelBPETokenizer, processors
from transformers import (AutoTokenizer, BertConfig, BertForQuestionAnswering,
                          BertForSequenceClassification, PreTrainedTokenizerFast, RobertaConfig,
                          RobertaForQuestionAnswering)
from transformers.trainer_pt_utils import get_parameter_names

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent.parent
torch.set_num_threads(1)

BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, pad_token_id=0,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ROBERTA = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=66, type_vocab_size=1,
               pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# Parameters whose values after the step are compared (head, segment embeddings, a layer).
WATCHED = ["classifier.weight", "classifier.bias", "qa_outputs.weight", "qa_outputs.bias",
           "bert.embeddings.token_type_embeddings.weight",
           "bert.encoder.layer.0.attention.self.query.weight",
           "roberta.encoder.layer.0.attention.self.query.weight", "bert.pooler.dense.weight"]


def squad_scorer(wheel):
    """compute_exact, compute_f1 and normalize_answer of transformers 4.46's SQuAD metrics."""
    source = zipfile.ZipFile(wheel).read("transformers/data/metrics/squad_metrics.py").decode()
    source = re.sub(r"^from \.\.\..*$", "", source, flags=re.M)
    source = source.replace("logger = logging.get_logger(__name__)", "")
    scope = {}
    exec(compile(source, "squad_metrics.py", "exec"), scope)
    return scope


def one_step(name, model, ids, mask, types, labels, watched=WATCHED):
    """Forward with labels, backward, clip to 1.0, one AdamW step, as the HF Trainer."""
    model.train()
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm],
                                    [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
    groups = [{"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3, foreach=False)
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, **labels)
    if hasattr(out, "logits"):
        logits = out.logits
    else:
        logits = torch.stack([out.start_logits, out.end_logits], dim=-1)
    out.loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    opt.step()
    state = dict(model.named_parameters())
    after = {n: state[n].detach().reshape(-1).tolist() for n in watched if n in state}
    plain = {k: (v.reshape(-1).tolist() if torch.is_tensor(v) else v) for k, v in labels.items()}
    return {"name": name, "shape": list(ids.shape), "input_ids": ids.reshape(-1).tolist(),
            "attention_mask": mask.reshape(-1).tolist(),
            "token_type_ids": types.reshape(-1).tolist(), "labels": plain,
            "logits_shape": list(logits.shape),
            "logits": logits.detach().reshape(-1).tolist(), "loss": float(out.loss),
            "grad_norm": norm, "after": after}


def heads():
    gen = torch.Generator().manual_seed(13)
    ids = torch.randint(3, 99, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    # A sentence pair: segment 1 from the fifth token on (padding stays 0).
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    types = types * mask
    cases = []
    for seed, name, cls, cfg, x, t, labels in [
        (31, "bert-tiny-regression", BertForSequenceClassification,
         BertConfig(**BERT, num_labels=1, problem_type="regression"),
         ids * mask, types, {"labels": torch.tensor([[0.5], [-1.25], [2.0]])}),
        (32, "bert-tiny-multilabel", BertForSequenceClassification,
         BertConfig(**BERT, num_labels=3, problem_type="multi_label_classification"),
         ids * mask, types,
         {"labels": torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}),
        (33, "bert-tiny-qa", BertForQuestionAnswering, BertConfig(**BERT), ids * mask, types,
         {"start_positions": torch.tensor([5, 0, 4]), "end_positions": torch.tensor([7, 0, 6])}),
        (34, "roberta-tiny-qa", RobertaForQuestionAnswering, RobertaConfig(**ROBERTA),
         torch.where(mask == 1, ids, torch.ones_like(ids)), torch.zeros_like(ids),
         {"start_positions": torch.tensor([5, 0, 4]), "end_positions": torch.tensor([7, 0, 6])}),
    ]:
        torch.manual_seed(seed)
        model = cls(cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ("classifier" in n or "qa_outputs" in n) and n.endswith("bias"):
                    p.normal_(0, 0.5)
        out = ROOT / "models" / name
        if out.exists():
            shutil.rmtree(out)
        model.save_pretrained(out, safe_serialization=True)
        (out / "generation_config.json").unlink(missing_ok=True)
        cases.append(one_step(name, model, x, mask, t, labels))
        print(f"wrote models/{name}")
    return cases


def roberta_tokenizer():
    """A byte-level BPE tokenizer with RoBERTa's specials and pair template."""
    corpus = ["Alice met Bob in Paris on a rainy day.", "The film was great, the plot dull.",
              "Who met Bob? Where did they meet?", "Oslo and Rome are cities; London too.",
              "It rained in Rome while Carol watched a lovely film."] * 20
    tok = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    tok.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True)
    out = REPO / "tests" / "assets" / "toy-roberta-tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    print("wrote tests/assets/toy-roberta-tokenizer/tokenizer.json")
    return PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   cls_token="<s>", sep_token="</s>")


PAIRS = [("the film was great", "but the plot was dull and far too long for me"),
         ("a lovely, moving story about two friends in paris", "great"),
         ("who met bob?", "alice met bob in paris on a rainy day.")]


def pair_cases(tokenizers):
    cases = []
    for tname, tok in tokenizers:
        for max_length in (8, 12, 64):
            for a, b in PAIRS:
                enc = tok(a, b, truncation=True, max_length=max_length)
                cases.append({"tokenizer": tname, "max_length": max_length, "text": a,
                              "text_pair": b, "input_ids": enc["input_ids"],
                              "token_type_ids": enc.get("token_type_ids",
                                                        [0] * len(enc["input_ids"]))})
    return cases


QA = [
    ("Who met Bob in Paris?",
     "It rained all day. Alice met Bob in Paris on a rainy day, and they watched a lovely "
     "film about two friends. The plot was dull, but the acting was great, and the story "
     "was moving. Later that week Carol went to Rome and Oslo, then came back to London.",
     "Alice"),
    ("Where did Carol go?",
     "It rained all day. Alice met Bob in Paris on a rainy day, and they watched a lovely "
     "film about two friends. The plot was dull, but the acting was great, and the story "
     "was moving. Later that week Carol went to Rome and Oslo, then came back to London.",
     "Rome and Oslo"),
    ("   What was dull?", "The plot was dull — but the film, quite lovely.", "The plot"),
]


def run_qa_positions(enc, i, start_char, end_char, cls_index=0):
    """Start/end tokens of an answer in window i, as transformers' run_qa computes them."""
    seq = enc.sequence_ids(i)
    offsets = enc["offset_mapping"][i]
    ts = 0
    while seq[ts] != 1:
        ts += 1
    te = len(enc["input_ids"][i]) - 1
    while seq[te] != 1:
        te -= 1
    if not (offsets[ts][0] <= start_char and offsets[te][1] >= end_char):
        return cls_index, cls_index
    while ts < len(offsets) and offsets[ts][0] <= start_char:
        ts += 1
    while offsets[te][1] >= end_char:
        te -= 1
    return ts - 1, te + 1


def window_cases(tokenizers):
    cases = []
    for tname, tok in tokenizers:
        for max_length, stride in ((32, 8), (24, 4)):
            for question, context, answer in QA:
                q = question.lstrip()
                enc = tok(q, context, truncation="only_second", max_length=max_length,
                          stride=stride, return_overflowing_tokens=True,
                          return_offsets_mapping=True)
                start = context.index(answer)
                windows = []
                for i in range(len(enc["input_ids"])):
                    seq = enc.sequence_ids(i)
                    offsets = [list(o) if s == 1 else None
                               for o, s in zip(enc["offset_mapping"][i], seq)]
                    s, e = run_qa_positions(enc, i, start, start + len(answer))
                    windows.append({"input_ids": enc["input_ids"][i],
                                    "token_type_ids": enc["token_type_ids"][i]
                                    if "token_type_ids" in enc else [0] * len(seq),
                                    "offsets": offsets, "start": s, "end": e})
                cases.append({"tokenizer": tname, "max_length": max_length, "stride": stride,
                              "question": question, "context": context, "answer": answer,
                              "answer_start": start, "windows": windows})
    return cases


SQUAD = [
    ("the Eiffel Tower", ["Eiffel Tower", "tower"]),
    ("Eiffel", ["Eiffel Tower"]),
    ("in Paris, France!", ["Paris", "paris france"]),
    ("An apple a day", ["apple day"]),
    ("theory of everything", ["the theory of everything"]),
    ("x y y", ["x y"]),
    ("", []),
    ("Paris", []),
    ("", ["Paris"]),
    ("the", ["a"]),
    ("Straße—groß", ["strasse gross", "Straße—groß"]),
    ("1,000 men", ["1000 men", "a thousand men"]),
]


def squad_cases(scorer):
    out = []
    for pred, golds in SQUAD:
        real = [g for g in golds if scorer["normalize_answer"](g)] or [""]
        out.append({"prediction": pred, "golds": golds,
                    "exact": max(scorer["compute_exact"](g, pred) for g in real),
                    "f1": max(scorer["compute_f1"](g, pred) for g in real)})
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    scorer = squad_scorer(sys.argv[1])
    bert_tok = AutoTokenizer.from_pretrained(REPO / "assets" / "minilm-compact")
    toks = [("minilm-compact", bert_tok), ("toy-roberta", roberta_tokenizer())]
    fixture = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__},
               "heads": heads(), "pairs": pair_cases(toks), "windows": window_cases(toks),
               "squad": squad_cases(scorer)}
    (ROOT / "fixtures" / "tasks.json").write_text(json.dumps(fixture, indent=None) + "\n")
    print("wrote fixtures/tasks.json")


if __name__ == "__main__":
    main()
