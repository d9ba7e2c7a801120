"""`torchrun` with gloo on the CPU: two processes compute what one process computes with the same global batch.

Tolerance. Both runs see the same samples and the same random draws in the same micro-batches (every draw is seeded
by (seed, step, micro-batch index)), and each micro-batch's forward and backward is the same float32 computation.
What differs is only the order of float additions: DDP sums the two ranks' gradients in gloo's all-reduce and
divides by 2, one process accumulates `loss / A` micro-batch by micro-batch; DINO's centres average two
all-reduced batch means against sequential updates. That is a relative difference of ~1e-7 in a gradient, and
for almost every weight it stays at that level (measured on a 2-core CPU after 3 steps: 99.9 % of the 5.3 M
numbers in model, EMA, head, teacher and centres within 1.5e-8, 0.003 % above 1e-6). AdamW magnifies it only
where the exact gradient is ~0 and the computed one is rounding noise — the key bias and weight directions to
which attention's softmax is blind: there m/(√v + ε) turns noise into a step of up to ~lr. So the bound is a
fraction of k·lr: we allow max |Δθ| ≤ 2 % of k·lr (6e-5 for 3 steps at lr 1e-3; measured 9e-6) and fewer than
0.1 % of the numbers off by more than 1e-6. A run that draws other noise (micro-batches of 16 instead of 4)
breaks both by far (measured: max 5.9e-3, 75 % of the numbers off by more than 1e-6), which the test checks too.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from conftest import ENV as BASE_ENV, run_module

ENV = {**BASE_ENV, 'OMP_NUM_THREADS': '1'}
STEPS, LR = 3, 1e-3
COMMON = ['--steps', str(STEPS), '--batch-size', '16', '--lr', str(LR), '--log-every', '1', '--sample-every', '0',
          '--ckpt-every', '100', '--eval-every', '0', '--recipe', 'paper']   # centring (default recipe): test below
PARTS = ('model', 'ema', 'head', 'teacher', 'dino')


def torchrun(*args, nproc=2, **kw):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
           '-m', 'sddit.train', *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=kw.get('timeout', 300))


def single(*args):
    return run_module('sddit.train', *args, env=ENV)


def diffs(a, b):
    "|Δ| of every number in model, EMA, head, teacher and DINO centres."
    return torch.cat([(a[p][k].float() - b[p][k].float()).abs().flatten() for p in PARTS for k in a[p]])


def losses(run):
    return [json.loads(l)['loss'] for l in (run / 'metrics.jsonl').read_text().splitlines()]


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    ddp, one, other = tmp_path / 'ddp', tmp_path / 'one', tmp_path / 'other'
    r = torchrun(*COMMON, '--accum', '2', '--out', str(ddp))            # 2 ranks × 2 micro-batches of 4
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = single(*COMMON, '--accum', '4', '--out', str(one))              # 1 process × 4 micro-batches of 4
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = single(*COMMON, '--out', str(other))                            # 1 × 16: the same batch, other draws
    assert r2.returncode == 0, r2.stderr[-3000:]

    a, b, c = (torch.load(d / 'ckpt.pt', weights_only=True) for d in (ddp, one, other))
    assert a['step'] == b['step'] == STEPS
    cfg = json.loads((ddp / 'config.json').read_text())
    assert cfg['procs'] == {'world_size': 2, 'micro_batch': 4, 'accum': 2}
    tol = 0.02 * STEPS * LR
    same, other = diffs(a, b), diffs(a, c)
    off = lambda d: (d > 1e-6).float().mean().item()
    print(f'2 ranks vs 1 process: max |Δθ| {same.max():.2e} (tolerance {tol:.0e}), {off(same):.4%} off by > 1e-6; '
          f'vs other draws: max {other.max():.2e}, {off(other):.1%} off by > 1e-6')
    assert same.max() <= tol and off(same) < 1e-3
    assert other.max() > 10 * tol and off(other) > 0.5                # the test can tell a different computation
    la, lb = losses(ddp), losses(one)
    assert len(la) == STEPS                                              # rank 0 alone writes the log
    assert la == pytest.approx(lb, rel=1e-5)                             # the logged loss is the global mean
    assert r.stdout.count('run folder') == 1                             # and rank 0 alone reports


def test_sigterm_stops_every_rank_at_one_step_and_one_process_resumes(tmp_path):
    out = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'sddit.train',
           '--steps', '2000', '--batch-size', '16', '--log-every', '1', '--sample-every', '0', '--ckpt-every', '1000',
           '--eval-every', '0', '--out', str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = out / 'metrics.jsonl'
    deadline = time.time() + 180
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)                                        # what a scheduler sends torchrun
    _, err = p.communicate(timeout=180)
    assert p.returncode != 0
    assert 'SIGTERM: stopped at step' in err and 'checkpoint saved' in err, err[-3000:]
    step = torch.load(out / 'ckpt.pt', weights_only=True)['step']
    assert 3 <= step < 2000
    # the same global batch on one process (2 accumulation steps of 8) continues the run
    r = single('--steps', str(step + 2), '--batch-size', '16', '--accum', '2', '--log-every', '1', '--sample-every', '0',
               '--ckpt-every', '1000', '--eval-every', '0', '--out', str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'resuming {out} at step {step}' in r.stdout
    assert [json.loads(l)['step'] for l in metrics.read_text().splitlines()] == list(range(1, step + 3))


def _centre_worker(rank, world, init, x, w, out):
    "One of `world` gloo processes: centre its half of `x`, a loss of it, and its share of the input gradient."
    import torch.distributed as dist
    from sddit.dino import center_batch
    dist.init_process_group('gloo', init_method=init, rank=rank, world_size=world)
    xs = x.chunk(world)[rank].clone().requires_grad_()
    y = center_batch(xs)
    ((y * w) ** 2).sum().backward()
    out[rank] = (y.detach(), xs.grad)
    dist.destroy_process_group()


def test_centring_over_two_processes_is_centring_over_their_whole_batch(tmp_path):
    "The head's input is centred over the global batch: 2 gloo processes compute the values and gradients of one."
    import torch.multiprocessing as mp
    from sddit.dino import center_batch
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 3, 5, generator=g) + 3.0, torch.randn(5, generator=g)   # 8 images × 3 tokens
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_centre_worker, args=(2, f'file://{tmp_path}/store', x, w, out), nprocs=2)
        (y0, g0), (y1, g1) = out[0], out[1]
    xx = x.clone().requires_grad_()
    y = center_batch(xx)                                              # one process, the whole batch
    ((y * w) ** 2).sum().backward()
    torch.testing.assert_close(torch.cat([y0, y1]), y.detach())
    torch.testing.assert_close(torch.cat([g0, g1]), xx.grad)          # gradients flow through the shared mean
    assert y.detach().mean((0, 1)).abs().max() < 1e-5                 # and the mean is gone
