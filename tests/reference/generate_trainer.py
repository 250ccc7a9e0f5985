#!/usr/bin/env python3
"""Reference for burnish-trainer: 10 optimizer steps of full fine-tuning of the tiny
BertForSequenceClassification checkpoint (tests/reference/models/bert-tiny-cls) in PyTorch,
the way the Hugging Face Trainer does them: dropout 0, no shuffling, micro-batches of 2
with gradient accumulation 2 (loss = summed token losses / items of the whole cycle),
clip_grad_norm_(1.0), AdamW (lr 5e-4, weight decay 0.01 except biases and LayerNorm
weights), linear schedule with 3 warmup steps.

    python3 tests/reference/generate_trainer.py

Writes tests/reference/fixtures/trainer.json (data, losses, grad norms) and
trainer_final.safetensors (every parameter after the 10 steps).
"""
import json
import pathlib
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import BertForSequenceClassification
from transformers import optimization as hf_opt
from transformers.trainer_pt_utils import get_parameter_names

ROOT = pathlib.Path(__file__).resolve().parent
torch.set_num_threads(1)
STEPS, ACCUM, MICRO, SEQ = 10, 2, 2, 8


def main():
    model = BertForSequenceClassification.from_pretrained(
        ROOT / "models" / "bert-tiny-cls", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.train()
    gen = torch.Generator().manual_seed(11)
    n = STEPS * ACCUM * MICRO
    ids = torch.randint(2, 99, (n, SEQ), generator=gen)
    lengths = torch.randint(3, SEQ + 1, (n,), generator=gen)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.randint(0, 3, (n,), generator=gen)

    decay = set(get_parameter_names(model, [torch.nn.LayerNorm],
                                    [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
    groups = [{"params": [p for nm, p in model.named_parameters() if nm in decay], "weight_decay": 0.01},
              {"params": [p for nm, p in model.named_parameters() if nm not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=5e-4, foreach=False)
    sched = hf_opt.get_linear_schedule_with_warmup(opt, 3, STEPS)
    losses, norms, lrs = [], [], []
    for step in range(STEPS):
        cycle = range(step * ACCUM * MICRO, (step + 1) * ACCUM * MICRO)
        items = len(cycle)
        total = 0.0
        lrs.append(sched.get_last_lr()[0])
        for m in range(ACCUM):
            sl = slice(cycle.start + m * MICRO, cycle.start + (m + 1) * MICRO)
            logits = model(input_ids=ids[sl], attention_mask=mask[sl]).logits
            loss = torch.nn.functional.cross_entropy(logits, labels[sl], reduction="sum") / items
            loss.backward()
            total += loss.item()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(total)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, ROOT / "fixtures" / "trainer_final.safetensors", metadata={"format": "pt"})
    out = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": sys.version.split()[0]},
           "steps": STEPS, "grad_accum": ACCUM, "micro_batch": MICRO, "seq": SEQ,
           "input_ids": ids.reshape(-1).tolist(), "attention_mask": mask.reshape(-1).tolist(),
           "labels": labels.tolist(), "losses": losses, "grad_norms": norms, "lrs": lrs}
    (ROOT / "fixtures" / "trainer.json").write_text(json.dumps(out) + "\n")
    print("losses", [round(x, 4) for x in losses])
    print("grad norms", [round(x, 4) for x in norms])


if __name__ == "__main__":
    main()
