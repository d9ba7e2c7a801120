"""Peak CPU memory of one SD-DiT training step (forward of student and teacher, L_G + L_D, backward).

Each configuration runs in a fresh process; we report the growth of the peak resident set size during the step
over the resident size just before it (parameters, teacher and inputs already allocated), for the chunked L_D of
`sddit.dino` and for the plain one that materialises every K-wide logit tensor (the setting `distill_chunk=0`).

    python bench/loss_memory.py                  # digits preset (bs 128) and XL/2 (bs 8, random latents, K = 8192)
    python bench/loss_memory.py --only digits
"""
import argparse, json, resource, subprocess, sys


def one(preset: str, batch: int, loss: str) -> dict:
    "Peak memory growth of one SD-DiT training step of `preset` (a digits or ImageNet preset) with the `loss` L_D."
    import os
    import torch
    from sddit.bench import bench_config
    from sddit.train import build_parts
    tc, ncfg, lcfg = bench_config(preset=preset, batch_size=batch, distill_chunk=0 if loss == 'plain' else 4096)
    p = build_parts(tc, ncfg, lcfg, 'cpu')
    K = tc.recipe.head_out_dim
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(batch, ncfg.in_channels, ncfg.input_size, ncfg.input_size, generator=g)
    y = torch.randint(0, ncfg.num_classes, (batch,), generator=g)
    for q in p.student.parameters(): q.grad = torch.zeros_like(q) if q.requires_grad else None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_now = int(open(f'/proc/{os.getpid()}/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024
    out = p.student(x, y, 0)
    out['loss'].backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = batch * (int(ncfg.num_patches * (1 - lcfg.mask_ratio)) + 1)
    return dict(preset=preset, batch=batch, loss=loss, K=K, visible_tokens=tokens,
                one_logit_copy_MiB=round(tokens * K * 4 / 2**20, 1),
                step_peak_growth_MiB=round((peak - max(before, rss_now)) / 1024, 1), peak_rss_MiB=round(peak / 1024, 1),
                L_D=round(out['L_D'].item(), 4))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--only', choices=['digits', 'xl'])
    ap.add_argument('--child', nargs=3)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one(a.child[0], int(a.child[1]), a.child[2]))); return
    runs = [('digits', 128), ('imagenet256-xl', 8)]
    if a.only: runs = [r for r in runs if (r[0] == 'digits') == (a.only == 'digits')]
    rows = []
    for preset, batch in runs:
        for loss in ('chunked', 'plain'):
            r = subprocess.run([sys.executable, __file__, '--child', preset, str(batch), loss], capture_output=True, text=True)
            if r.returncode: print(r.stderr, file=sys.stderr); continue
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    hdr = ['preset', 'batch', 'loss', 'K', 'visible_tokens', 'one_logit_copy_MiB', 'step_peak_growth_MiB', 'peak_rss_MiB', 'L_D']
    print('| ' + ' | '.join(hdr) + ' |'); print('|' + '---|' * len(hdr))
    for r in rows: print('| ' + ' | '.join(str(r[h]) for h in hdr) + ' |')


if __name__ == '__main__':
    main()
