"""Peak CPU memory of one SD-DiT training step (forward of student and teacher, L_G + L_D, backward).

Each configuration runs in a fresh process; we report the growth of the peak resident set size during the step
over the resident size just before it (parameters, teacher and inputs already allocated), for the chunked L_D of
`sddit.dino` and for the plain one that materialises every K-wide logit tensor (`sddit.dino.distill_ce`).

    python bench/loss_memory.py                  # digits preset (bs 128) and XL/2 (bs 8, random latents, K = 8192)
    python bench/loss_memory.py --only digits
"""
import argparse, json, resource, subprocess, sys


def one(preset: str, batch: int, loss: str) -> dict:
    import torch
    import sddit.dino as dino_mod
    from sddit.dit import SDDiT, model_config
    from sddit.edm import EDMPrecond
    from sddit.dino import DINOHead, DINOLoss, distill_ce, entropy
    from sddit.teacher import Teacher
    from sddit.losses import LossConfig, training_losses
    torch.manual_seed(0)
    if loss == 'plain':   # the reference: full logits for every token, kept by autograd
        def plain(z_s, w_s, z_t, w_t, center, tau_s, tau_t, chunk=0):
            s, t = z_s @ w_s.T, z_t @ w_t.T
            p_t = ((t.float() - center) / tau_t).softmax(-1)
            return distill_ce(s, t, center, tau_s, tau_t), p_t.mean(0), entropy(p_t).mean()
        dino_mod.chunked_distill_ce = plain
    if preset == 'digits':
        cfg, K, hid, bott = model_config('digits'), 1024, 256, 64
        x, y = torch.randn(batch, 1, 8, 8), torch.randint(0, 10, (batch,))
    else:
        cfg, K, hid, bott = model_config(preset), 8192, 2048, 256
        x, y = torch.randn(batch, 4, 32, 32) * 0.5, torch.randint(0, 1000, (batch,))
    model = EDMPrecond(SDDiT(cfg))
    head = DINOHead(cfg.hidden_size, K, hid, bott)
    teacher, dino = Teacher(model.net.encoder, head), DINOLoss(K)
    for p in list(model.parameters()) + list(head.parameters()): p.grad = torch.zeros_like(p) if p.requires_grad else None
    lc = LossConfig(num_classes=cfg.num_classes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import os; rss_now = int(open(f'/proc/{os.getpid()}/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024
    out = training_losses(model, x, y, lc, head, teacher, dino)
    out['loss'].backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = batch * (int(cfg.num_patches * 0.8) + 1)
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
    runs = [('digits', 128), ('DiT-XL/2', 8)]
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
