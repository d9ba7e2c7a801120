"""GPU check of the trainer at scale (issue 5): `imagenet256-s` on one CUDA GPU with random latent shards.

Correctness first, then a timing table (printed last, also written as JSON):

1. fp32 vs bf16 (autocast, fp32 master weights) vs tf32: 50 steps each from the same seed, the same batches and
   the same random draws; per-step loss agreement (L_G, L_D), no skipped (non-finite) steps.
2. `--compile` (bf16): the logged losses of a compiled run against the eager bf16 run of (1).
3. `--grad-checkpoint` (bf16): the same losses, and the peak memory it saves.
4. steps/s of fp32, tf32, bf16 and bf16 + compile at the preset's global batch 256 (log every 10 steps, so one
   host sync per 10 steps), median over the intervals after warm-up.

No extra wheels are needed (sddit.train imports neither diffusers, fastcore nor torch-fidelity). On the GPU machine,
from the repository root:

    export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 && python3 bench/gpu_train_check.py --out $OUT

About 4–6 minutes on one H100/H200 (most of it torch.compile). Exit code 1 when a check fails. A dry run of the
script's logic on a CPU (minutes, no tf32 or memory figures):

    python bench/gpu_train_check.py --device cpu --batch-size 4 --steps 3 --timing-steps 20 --skip-compile --out /tmp/g
"""
import argparse, json, math, os, shutil, statistics, sys, tempfile, time
from pathlib import Path

import torch


def rows_of(run: Path) -> list:
    return [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines() if l.strip()]


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.environ.get('OUT', 'gpu_train_check_out'))
    ap.add_argument('--steps', type=int, default=50, help='steps of the agreement runs')
    ap.add_argument('--timing-steps', type=int, default=40)
    ap.add_argument('--batch-size', type=int, default=256)
    ap.add_argument('--skip-compile', action='store_true')
    ap.add_argument('--device', default='cuda', help='cpu: a dry run of this script (small --batch-size; no tf32, no memory figures)')
    a = ap.parse_args()
    cuda = a.device.startswith('cuda')
    if cuda and not torch.cuda.is_available(): sys.exit('no CUDA GPU visible: this check is for a GPU machine')
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name_of_device = torch.cuda.get_device_name() if cuda else 'CPU (dry run)'
    from sddit.imagenet import random_latent_shards
    from sddit.train import TrainConfig, train

    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix='sddit-gpu-check-'))
    t0 = time.time()
    lat = random_latent_shards(work / 'latents', n=2048, num_classes=1000, shard_size=512)
    print(f'{name_of_device} · torch {torch.__version__} · random latents in {time.time() - t0:.1f} s', flush=True)

    def run(name, steps, log_every, **kw):
        sync()
        if cuda: torch.cuda.reset_peak_memory_stats()
        t = time.time()
        d = train(TrainConfig(preset='imagenet256-s', data=str(lat), steps=steps, batch_size=a.batch_size, device=a.device,
                              log_every=log_every, sample_every=0, ckpt_every=10 ** 9, workers=4 if cuda else 0,
                              out=str(work / name), **kw),
                  quiet=True)
        sync()
        r = rows_of(d)
        shutil.rmtree(d, ignore_errors=True)                     # ~0.6 GB of checkpoint per run
        info = dict(wall_s=round(time.time() - t, 1), peak_GiB=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else 0.0,
                    skipped=r[-1]['skipped'])
        print(f'  {name}: {steps} steps in {info["wall_s"]} s, peak {info["peak_GiB"]} GiB, skipped {info["skipped"]}', flush=True)
        return r, info

    checks, result = [], dict(device=name_of_device, torch=torch.__version__, batch=a.batch_size)

    def check(name, ok, detail):
        checks.append(dict(check=name, ok=bool(ok), detail=detail))
        print(f'{"PASS" if ok else "FAIL"}  {name}: {detail}', flush=True)

    # 1. precision agreement, per step
    print('agreement runs (log every step):', flush=True)
    precisions = ('fp32', 'bf16', 'tf32') if cuda else ('fp32', 'bf16')
    runs = {p: run(f'agree-{p}', a.steps, 1, precision=p) for p in precisions}
    ref = runs['fp32'][0]
    for p in precisions[1:]:
        r = runs[p][0]
        per = {k: [rel(x[k], y[k]) for x, y in zip(r, ref)] for k in ('loss', 'L_G', 'L_D')}
        finite = all(math.isfinite(x['loss']) for x in r) and runs[p][1]['skipped'] == 0
        summary = {k: dict(mean=statistics.mean(v), max=max(v), first=v[0], last10=statistics.mean(v[-10:])) for k, v in per.items()}
        result[f'{p}_vs_fp32'] = summary
        lim_mean, lim_max = (0.01, 0.05) if p == 'bf16' else (0.005, 0.02)
        check(f'{p} vs fp32 loss over {a.steps} steps', finite and summary['loss']['mean'] < lim_mean and summary['loss']['max'] < lim_max,
              f"rel. diff of the loss: step 1 {summary['loss']['first']:.2e}, mean {summary['loss']['mean']:.2e}, "
              f"max {summary['loss']['max']:.2e}, last 10 {summary['loss']['last10']:.2e}; L_G mean {summary['L_G']['mean']:.2e}, "
              f"L_D mean {summary['L_D']['mean']:.2e} (limits: mean < {lim_mean}, max < {lim_max}; finite, none skipped: {finite})")
    result['losses'] = {p: [x['loss'] for x in runs[p][0]] for p in runs}

    # 3. activation checkpointing: same losses, less memory
    n_gc = min(10, a.steps)
    gc, gci = run('agree-bf16-gradckpt', n_gc, 1, precision='bf16', grad_checkpoint=True)
    d = max(rel(x['loss'], y['loss']) for x, y in zip(gc, runs['bf16'][0][:n_gc]))
    result['grad_checkpoint'] = dict(max_rel_loss_diff=d, peak_GiB=gci['peak_GiB'], peak_GiB_without=runs['bf16'][1]['peak_GiB'])
    check('--grad-checkpoint keeps the losses and lowers the peak memory', d < 1e-2 and (gci['peak_GiB'] < runs['bf16'][1]['peak_GiB'] or not cuda),
          f"max rel. loss diff over {n_gc} steps {d:.2e}; peak {gci['peak_GiB']} GiB vs {runs['bf16'][1]['peak_GiB']} GiB")

    # 4 (+2). timing, and compiled vs eager
    print('timing runs (log every 10 steps):', flush=True)
    timing = {}
    for name, kw in [('fp32', dict(precision='fp32')), ('tf32', dict(precision='tf32')), ('bf16', dict(precision='bf16')),
                     ('bf16+compile', dict(precision='bf16', compile=True))]:
        if ('compile' in name and a.skip_compile) or (name == 'tf32' and not cuda): continue
        r, info = run(f'time-{name}', a.timing_steps, 10, **kw)
        sps = [x['steps_per_s'] for x in r[1:]] or [r[-1]['steps_per_s']]     # intervals after the first (warm-up)
        timing[name] = dict(steps_per_s=statistics.median(sps), peak_GiB=info['peak_GiB'], wall_s=info['wall_s'])
        if name == 'bf16+compile':
            eager = runs['bf16'][0]
            for x in r:
                if 10 <= x['step'] <= len(eager):
                    m = statistics.mean(e['loss'] for e in eager[x['step'] - 10:x['step']])
                    x['eager_mean'] = m
            diffs = [rel(x['loss'], x['eager_mean']) for x in r if 'eager_mean' in x]
            result['compile_vs_eager'] = diffs
            check('--compile (bf16) vs eager bf16 losses', diffs and max(diffs) < 0.02 and info['skipped'] == 0,
                  f"rel. diff of the 10-step mean losses: {', '.join(f'{v:.2e}' for v in diffs)} (limit 0.02)")
    result['timing'] = timing
    result['checks'] = checks
    (out / 'gpu_train_check.json').write_text(json.dumps(result, indent=1))

    print(f'\nSD-DiT imagenet256-s, global batch {a.batch_size}, one {name_of_device} (random latents, '
          f'K = 8192 head, r = 0.2):')
    print(f"{'precision':<14}{'steps/s':>9}{'peak GiB':>10}")
    for name, t in timing.items(): print(f"{name:<14}{t['steps_per_s']:>9.2f}{t['peak_GiB']:>10.2f}")
    print('(peers on one H200, DESIGN.md: DiT-S/2 bf16 11.8 steps/s, MaskDiT-S/2 10.3; SD-DiT costs ~2x a DiT step in FLOPs at S/2)')
    print(f"\n{sum(c['ok'] for c in checks)}/{len(checks)} checks passed; JSON: {out / 'gpu_train_check.json'}")
    sys.exit(0 if all(c['ok'] for c in checks) else 1)


if __name__ == '__main__':
    main()
