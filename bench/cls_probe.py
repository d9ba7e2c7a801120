"""Why does the [CLS] half of L_D not learn on digits? Five variants, one table.

Every SD-DiT run of the digits sweep ends with a uniform [CLS] teacher (entropy of each image's P_T = log K): the
[CLS] part of L_D sits at log K and gives no gradient, while the patch part stays healthy. This script trains the
`digits` preset five ways and prints the teacher's [CLS] and patch entropies as training goes. Where the [CLS]
entropy per image equals the entropy of the batch mean, every image gets the same [CLS] distribution:

* `paper`  — the learned [CLS] token of the paper (identical for every image at initialisation under adaLN-Zero);
* `pool`   — the [CLS] token plus the mean of the visible patch embeddings, so it differs per image from step 0;
* `freeze` — the paper's token, with the K prototypes (the head's last layer) frozen for the first `--freeze` steps,
             as DINO and iBOT freeze their last layer during the first epoch;
* `sharp`  — a much sharper teacher, τ_T = 0.01 throughout (instead of 0.04 → 0.07);
* `clean`  — the student's σ capped at 0.2, so it always sees the digit clearly (this changes L_G too).

Everything but `paper` is a change made here by patching, for this probe only; the package trains `paper`.

    python bench/cls_probe.py [--steps 300] [--freeze 100] [--seed 0] [--variants paper pool ...]
"""
import argparse, tempfile
from pathlib import Path

import torch

import sddit.dit as dit
import sddit.dino as dino
import sddit.losses as losses
import sddit.train as T
from sddit.experiments import load_results

_paper_init, _paper_step = dit.DiTEncoder.__init__, T.train_step
_paper_temp, _paper_sigma = dino.teacher_temp, losses.sample_sigma
VARIANTS = ('paper', 'pool', 'freeze', 'sharp', 'clean')

def pooled_cls(first_block, args):
    "A pre-hook on the encoder's first block: [CLS] += the mean of the visible patch embeddings that follow it."
    h, c = args
    return torch.cat([h[:, :1] + h[:, 1:].mean(1, keepdim=True), h[:, 1:]], 1), c

def pooled_init(self, cfg):
    _paper_init(self, cfg)
    self.blocks[0].register_forward_pre_hook(pooled_cls)          # deep copies (the teacher) keep the hook

def freezing_step(n_freeze):
    def step_fn(p, x, y, step, *a, **k):
        p.head.last_layer.parametrizations.weight.original1.requires_grad_(step >= n_freeze)
        return _paper_step(p, x, y, step, *a, **k)
    return step_fn

def run(variant, steps, seed, n_freeze, out):
    dit.DiTEncoder.__init__ = pooled_init if variant == 'pool' else _paper_init
    T.train_step = freezing_step(n_freeze) if variant == 'freeze' else _paper_step
    dino.teacher_temp = (lambda *a, **k: 0.01) if variant == 'sharp' else _paper_temp
    losses.sample_sigma = (lambda *a, **k: _paper_sigma(*a, **k).clamp(max=0.2)) if variant == 'clean' else _paper_sigma
    try:
        T.train(T.TrainConfig(preset='digits', steps=steps, seed=seed, out=str(out), sample_every=0, ckpt_every=steps,
                              eval_every=0, log_every=25), quiet=True)
    finally:
        dit.DiTEncoder.__init__, T.train_step = _paper_init, _paper_step
        dino.teacher_temp, losses.sample_sigma = _paper_temp, _paper_sigma
    return load_results(out / 'metrics.jsonl')

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--steps', type=int, default=300); ap.add_argument('--freeze', type=int, default=100)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = {v: run(v, a.steps, a.seed, a.freeze, Path(d) / v) for v in a.variants}
    log_k = next(iter(res.values()))[-1]['log_K']
    shown = sorted({25, 50, 100, a.freeze, a.steps} & {r['step'] for r in next(iter(res.values()))})
    print(f"\nteacher entropies on digits (log K = {log_k:.3f}); per image H(P_T) / of the batch mean H(mean P_T)")
    print(f"| variant | step | [CLS] per image | [CLS] batch mean | patch per token | patch batch mean | L_D [CLS] | τ_T |")
    print('|---|---|---|---|---|---|---|---|')
    for v, rows in res.items():
        for r in rows:
            if r['step'] in shown:
                print(f"| {v} | {r['step']} | {r['token_entropy_cls']:.3f} | {r['entropy_cls']:.3f} | "
                      f"{r['token_entropy_patch']:.3f} | {r['entropy_patch']:.3f} | {r['L_D_cls']:.3f} | {r['tau_t']:.3f} |")

if __name__ == '__main__': main()
