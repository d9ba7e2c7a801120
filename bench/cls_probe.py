"""Why does the [CLS] half of L_D not learn on digits? Five variants, one table.

Under the paper's recipe every SD-DiT run on digits ends with a uniform [CLS] teacher (entropy of each image's P_T = log K): the
[CLS] part of L_D sits at log K and gives no gradient, while the patch part stays healthy. This script trains the
`digits` preset five ways and prints the teacher's [CLS] and patch entropies as training goes. Where the [CLS]
entropy per image equals the entropy of the batch mean, every image gets the same [CLS] distribution:

* `paper`  — the learned [CLS] token of the paper (identical for every image at initialisation under adaLN-Zero);
* `pool`   — the [CLS] token plus the mean of the visible patch embeddings, so it differs per image from step 0;
* `freeze` — the paper's token, with the K prototypes (the head's last layer) frozen for the first `--freeze` steps,
             as DINO and iBOT freeze their last layer during the first epoch;
* `sharp`  — a much sharper teacher, τ_T = 0.01 throughout (instead of 0.04 → 0.07);
* `clean`  — the student's σ capped at 0.2, so it always sees the digit clearly (this changes L_G too).

Every variant is a setting of the trainer (`sddit.experiments.PROBES`), recorded in its run's config.json like any
other. All five start from `--recipe paper`; the kit's default recipe adds centring of the head's input, which
keeps the [CLS] alive (04_dino, 06_losses).

    python bench/cls_probe.py [--steps 300] [--freeze 100] [--seed 0] [--variants paper pool ...]
"""
import argparse, tempfile
from pathlib import Path

from sddit.config import TrainConfig
from sddit.train import train
from sddit.experiments import PROBES, load_results

VARIANTS = ('paper', 'pool', 'freeze', 'sharp', 'clean')


def settings(variant: str, n_freeze: int) -> dict:
    if variant == 'paper': return dict(recipe='paper')           # every variant starts from the paper's recipe
    if variant == 'freeze': return dict(recipe='paper', freeze_last_layer=n_freeze)
    return PROBES[f'cls-{variant}']


def run(variant, steps, seed, n_freeze, out):
    train(TrainConfig(preset='digits', steps=steps, seed=seed, out=str(out), sample_every=0, ckpt_every=steps,
                      eval_every=0, log_every=25, **settings(variant, n_freeze)), quiet=True)
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
