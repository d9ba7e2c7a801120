"""What each step optimisation changes, measured on the CPU with the digits preset (SD-DiT, batch 128).

    python bench/cpu_ablation.py          # prints a table: variant, ms/step (median of 20 after 5 warm-up), vs baseline

Variants: the trainer's step as is (fused AdamW, SDPA attention, chunked L_D); AdamW with the foreach kernel instead of
the fused one; attention written out (softmax(QKᵀ/√d)V) instead of `scaled_dot_product_attention`; the plain L_D that
materialises the K-wide logits; and bf16 autocast. CPU only: on a GPU the same switches are in `python -m sddit.bench`
(precision, --compile) and the prepared `bench/gpu_bench.sh`.
"""
import contextlib, math

import torch
import torch.nn.functional as F

import sddit.dino as dino_mod
import sddit.dit as dit_mod
import sddit.train as train_mod
from sddit.bench import bench_step


def plain_ce(z_s, w_s, z_t, w_t, center, tau_s, tau_t, chunk=0):
    s, t = z_s @ w_s.T, z_t @ w_t.T
    p_t = ((t.float() - center) / tau_t).softmax(-1)
    return dino_mod.distill_ce(s, t, center, tau_s, tau_t), p_t.mean(0), dino_mod.entropy(p_t).mean()


def manual_attention(q, k, v):
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v


@contextlib.contextmanager
def variant(name):
    saved = (dino_mod.chunked_distill_ce, dit_mod.F.scaled_dot_product_attention, train_mod.make_optimizer)
    if name == 'plain L_D': dino_mod.chunked_distill_ce = plain_ce
    if name == 'attention written out': dit_mod.F = type('F', (), {'scaled_dot_product_attention': staticmethod(manual_attention)})
    if name == 'foreach AdamW':
        train_mod.make_optimizer = lambda params, lr, device: torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)
    try: yield
    finally:
        dino_mod.chunked_distill_ce, _, train_mod.make_optimizer = saved
        dit_mod.F = F


def time_variant(name, steps=20, warmup=5):
    "(ms/step median, loss) of the digits SD-DiT step under `name`, timed by the benchmark's own `bench_step`."
    with variant(name):
        r = bench_step('digits', 'sddit', 'bf16' if name == 'bf16 autocast' else 'fp32', steps=steps, warmup=warmup)
    return r['ms'], r['loss']


if __name__ == '__main__':
    names = ['trainer as is', 'foreach AdamW', 'attention written out', 'plain L_D', 'bf16 autocast']
    rows = [(n, *time_variant(n)) for n in names]
    base = rows[0][1]
    print(f'digits SD-DiT, batch 128, {torch.get_num_threads()} threads, torch {torch.__version__}')
    print('| variant | ms/step | vs the trainer | loss after 25 steps |'); print('|---|---|---|---|')
    for n, ms, loss in rows: print(f'| {n} | {ms:.1f} | {ms / base:.2f}× | {loss:.4f} |')
