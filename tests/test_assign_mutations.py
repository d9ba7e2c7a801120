"""The exercises' checks catch plausible wrong answers, and accept right answers written differently.

`MUTATIONS` lists, for every exercise, wrong answers a student could plausibly write — each a replacement inside the
exercise's solution region — and which checks catch it: 'visible' (the student's own checks fail, so they learn from
them) or 'hidden' (the visible checks pass; only grading's hidden checks fail). Every exercise has at least two wrong
answers, and at least one of them is caught by the visible checks. `ALTERNATIVES` lists right answers that differ
from the reference's: they must pass every check, visible and hidden.

One kernel per lesson runs the answered student copy (the lesson's own module blocked, as when grading) up to its
last check, then for each answer: the cells from the exercise's first cell to its last check with the answer planted
— each check cell twice, as the student sees it (visible) and as grading runs it (hidden checks included) — then the
reference cells again. A control run of the unchanged reference answer must pass, so a wrong answer is caught by its
checks, not by state left over from another run."""
import re
from collections import defaultdict
from pathlib import Path

import pytest

from sddit.assign import (BEGIN_SOLUTION, END_SOLUTION, EXPORT_DIRECTIVES, SKIP_FLAGS, _drop_directives, cell_role,
                          default_exp, directives, execute_cells, fill_answers, find_exercises,
                          notebooks_with_exercises, read_notebook, regions, student_copy)

NBS = Path(__file__).resolve().parents[1] / 'nbs'
REGION = 'the whole solution region that contains'        # `old` = (REGION, a snippet of that region)

# exercise: [(caught by, the mistake, old, new)]
MUTATIONS = {
    'edm-noising': [
        ('visible', 'a vector of σ not reshaped: it scales pixel columns, not images',
         '    if sigma.ndim == 1: sigma = sigma.reshape(-1, *([1] * (x0.ndim - 1)))\n', ''),
        ('visible', 'σ² (the variance) instead of σ', '    return x0 + sigma * noise', '    return x0 + sigma ** 2 * noise'),
        ('visible', 'the given noise ignored', '    if noise is None: noise = torch.randn_like(x0)',
         '    noise = torch.randn_like(x0)')],
    'edm-sigma': [
        ('visible', 'P_mean and P_std swapped', '* P_std + P_mean).exp()', '* P_mean + P_std).exp()'),
        ('visible', 'ln σ returned, not σ', '* P_std + P_mean).exp()', '* P_std + P_mean)'),
        ('visible', 'the generator ignored', 'torch.randn(n, generator=generator, device=device)',
         'torch.randn(n, device=device)'),
        ('hidden', 'the default P_mean, P_std hard-coded', '* P_std + P_mean).exp()', '* 1.2 - 1.2).exp()')],
    'edm-precond': [
        ('visible', 'c_noise = ln σ, without the 1/4', '    c_noise = sigma.log() / 4', '    c_noise = sigma.log()'),
        ('visible', 'c_out without the square root', 'c_out = sigma * sigma_data / (s2 + d2).sqrt()',
         'c_out = sigma * sigma_data / (s2 + d2)'),
        ('visible', 'forward skips c_in', 'self.net((c_in * x).to(x.dtype), c_noise.flatten(), y, **kw)',
         'self.net(x, c_noise.flatten(), y, **kw)'),
        ('visible', 'forward passes σ instead of c_noise', 'self.net((c_in * x).to(x.dtype), c_noise.flatten(), y, **kw)',
         'self.net((c_in * x).to(x.dtype), sigma, y, **kw)'),
        ('hidden', "the network's keyword arguments dropped", 'c_noise.flatten(), y, **kw)', 'c_noise.flatten(), y)')],
    'mask-gather-restore': [
        ('visible', 'ids_restore = the shuffle itself, not its inverse', '    ids_restore = ids_shuffle.argsort(dim=1)',
         '    ids_restore = ids_shuffle'),
        ('visible', 'the mask left in shuffled order', 'ids_restore, mask.gather(1, ids_restore))', 'ids_restore, mask)'),
        ('visible', "every image gathered at the first image's positions",
         '    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))', '    return x[:, ids[0]]'),
        ('hidden', 'the generator ignored', 'torch.rand(N, L, generator=generator, device=device)',
         'torch.rand(N, L, device=device)')],
    'mask-reinsert': [
        ('visible', 'zeros (a mask token of 0) instead of the noised patches',
         '    return insert_tokens(x_tok, visible, ids_keep)',
         '    return insert_tokens(torch.zeros_like(x_tok), visible, ids_keep)'),
        ('visible', 'written into base in place', '    return base.scatter(1,', '    return base.scatter_(1,'),
        ('visible', 'the noised patches written over the encoder outputs',
         '    return insert_tokens(x_tok, visible, ids_keep)',
         '    return insert_tokens(x_tok, gather_tokens(x_tok, ids_keep), ids_keep)')],
    'dit-complete': [
        ('visible', 'zeros fill the invisible positions', 'base = x_tok if self.mask_token is None',
         'base = torch.zeros_like(x_tok) if self.mask_token is None'),
        ('visible', "MaskDiT's mask token ignored",
         'base = x_tok if self.mask_token is None else self.mask_token.to(visible.dtype).expand_as(x_tok)',
         'base = x_tok'),
        ('hidden', 'the patches detached: L_G cannot train the patch embedding through them',
         'insert_tokens(base.to(visible.dtype), visible, ids_keep)',
         'insert_tokens(base.to(visible.dtype).detach(), visible, ids_keep)'),
        ('hidden', "H left in x_tok's dtype (breaks mixed precision)",
         'insert_tokens(base.to(visible.dtype), visible, ids_keep)', 'insert_tokens(base, visible, ids_keep)')],
    'dino-head': [
        ('visible', 'a plain linear layer: prototypes not normalised',
         (REGION, 'self.last_layer = nn.utils'),
         '        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)\n'
         '        nn.init.trunc_normal_(self.last_layer.weight, std=0.02)\n'),
        ('visible', 'g left trainable', '\n        g.requires_grad_(False)', ''),
        ('visible', 'columns normalised instead of rows', 'weight_norm(last)', 'weight_norm(last, dim=1)'),
        ('visible', 'a bias on the prototypes', 'nn.Linear(bottleneck_dim, out_dim, bias=False)',
         'nn.Linear(bottleneck_dim, out_dim)')],
    'dino-loss': [
        ('visible', 'no centering', 'return ((t_logits.detach().float() - center) / tau_t).softmax(dim=-1)',
         'return (t_logits.detach().float() / tau_t).softmax(dim=-1)'),
        ('visible', 'the teacher not detached', 'return ((t_logits.detach().float() - center)',
         'return ((t_logits.float() - center)'),
        ('hidden', 'the centre moves with the wrong weights', 'return center * momentum + batch_mean * (1 - momentum)',
         'return center * (1 - momentum) + batch_mean * momentum'),
        ('visible', 'τ_S and τ_T swapped',
         '    p_t = teacher_probs(t_logits, center, tau_t)\n    return -(p_t * (s_logits.float() / tau_s)',
         '    p_t = teacher_probs(t_logits, center, tau_s)\n    return -(p_t * (s_logits.float() / tau_t)'),
        ('hidden', 'summed over the tokens, not averaged', '.log_softmax(dim=-1)).sum(-1).mean()',
         '.log_softmax(dim=-1)).sum()')],
    'teacher-ema': [
        ('visible', 'β and 1 − β swapped', 'w = weight if ok is None', 'w = 1 - weight if ok is None'),
        ('visible', 'the schedule runs backwards, 0.999 → 0.996', 'return final - (final - base) * (1 + math.cos(',
         'return base + (final - base) * (1 + math.cos('),
        ('hidden', 'a linear schedule', 'return final - (final - base) * (1 + math.cos(math.pi * k / total_steps)) / 2',
         'return base + (final - base) * k / total_steps'),
        ('hidden', 'the skip flag ignored (a NaN step still moves the teacher)',
         'w = weight if ok is None else [ok.to(dst[0]) * weight] * len(dst)', 'w = weight')],
    'sddit-step': [
        ('visible', "the student's tokens detached before the head (L_D never reaches the encoder)",
         "d = dino(head, feats['cls'], feats['tokens'],", "d = dino(head, feats['cls'].detach(), feats['tokens'].detach(),"),
        ('visible', "the teacher's tokens at every position, not the student's visible ones",
         'ids = mask.ids_keep if mask is not None else None', 'ids = None'),
        ('hidden', "the teacher fed the student's noisy view", 't_cls, t_tok = teacher(x_t, sigma_t, y_t,',
         't_cls, t_tok = teacher(x_sigma, sigma, y_t,'),
        ('hidden', "the teacher's label ignored (always the null class)",
         "y_t = y if cfg.teacher_label == 'student' else None", 'y_t = None'),
        ('hidden', 'L_G summed over the batch', 'denoising_loss(D_x, x0, sigma, cfg.sigma_data).mean()',
         'denoising_loss(D_x, x0, sigma, cfg.sigma_data).sum()')],
    'sampler-cfg': [
        ('visible', 'extrapolated from the conditional output', 'return d_uncond + cfg_scale * (d_cond - d_uncond)',
         'return d_cond + cfg_scale * (d_cond - d_uncond)'),
        ('visible', 'the two halves swapped', 'd_cond, d_uncond = d.chunk(2)', 'd_uncond, d_cond = d.chunk(2)'),
        ('hidden', 'two network calls instead of one batch',
         (REGION, 'd = net(torch.cat'),
         '        d_cond, d_uncond = net(x, sigma, y), net(x, sigma, y_null)\n'
         '        return d_uncond + cfg_scale * (d_cond - d_uncond)\n')],
    'sampler-heun': [
        ('visible', 'Euler steps only', '        if i < steps - 1:', '        if False:'),
        ('visible', 'the correction on the last step too (σ = 0)', '        if i < steps - 1:', '        if True:'),
        ('visible', 'the slope with the wrong sign', 'd_cur = (x_hat - denoised) / t_hat', 'd_cur = (denoised - x_hat) / t_hat'),
        ('visible', "Heun's average replaced by the new slope alone", '(0.5 * d_cur + 0.5 * d_prime)', 'd_prime')],
}

# exercise: [(how it differs, old, new)] — right answers that must pass every check
ALTERNATIVES = {
    'edm-noising': [('indexing with None, noise drawn inline', (REGION, 'sigma = torch.as_tensor'),
                     '    s = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)\n'
                     '    s = s[(...,) + (None,) * (x0.ndim - 1)] if s.ndim else s\n'
                     '    return x0 + s * (torch.randn_like(x0) if noise is None else noise)\n')],
    'mask-gather-restore': [('take_along_dim', '    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))',
                             '    return torch.take_along_dim(x, ids[..., None], dim=1)')],
    'mask-reinsert': [('a clone and index assignment', '    return base.scatter(1, ids[..., None].expand(-1, -1, base.shape[-1]), tokens)',
                       '    out = base.clone()\n    out[torch.arange(base.shape[0], device=base.device)[:, None], ids] = tokens\n'
                       '    return out')],
    'dit-complete': [('torch.where over a boolean mask', (REGION, 'base = x_tok if'),
                      '        base = (x_tok if self.mask_token is None else self.mask_token.expand_as(x_tok)).to(visible.dtype)\n'
                      '        seen = torch.zeros(x_tok.shape[:2], dtype=torch.bool, device=x_tok.device).scatter(1, ids_keep, True)\n'
                      '        return torch.where(seen[..., None], insert_tokens(torch.zeros_like(base), visible, ids_keep), base)\n')],
    'dino-head': [
        ('its own parametrization: unit rows, no g at all', (REGION, 'self.last_layer = nn.utils'),
         '        class UnitRows(nn.Module):\n'
         '            def forward(self, v): return F.normalize(v, dim=1)\n'
         '        last = nn.Linear(bottleneck_dim, out_dim, bias=False)\n'
         '        nn.init.trunc_normal_(last.weight, std=0.02)\n'
         "        self.last_layer = nn.utils.parametrize.register_parametrization(last, 'weight', UnitRows())\n"),
        ('its own module with a `weight` property', (REGION, 'self.last_layer = nn.utils'),
         '        class Prototypes(nn.Module):\n'
         '            def __init__(self, d, k):\n'
         '                super().__init__()\n'
         '                self.v = nn.Parameter(nn.init.trunc_normal_(torch.empty(k, d), std=0.02))\n'
         '            @property\n'
         '            def weight(self): return F.normalize(self.v, dim=1)\n'
         '            def forward(self, z): return z @ self.weight.T\n'
         '        self.last_layer = Prototypes(bottleneck_dim, out_dim)\n')],
    'teacher-ema': [('a plain loop of mul_ and add_', (REGION, 'torch._foreach_lerp_'),
                     '    w = weight if ok is None else ok.to(dst[0]) * weight\n'
                     '    for t, s in zip(dst, src): t.mul_(1 - w).add_(s * w)\n')],
    'sddit-step': [('λ(σ)·‖D − x0‖² written out', 'denoising_loss(D_x, x0, sigma, cfg.sigma_data).mean()',
                    '(loss_weight(sigma, cfg.sigma_data) * (D_x.float() - x0).pow(2).flatten(1).mean(1)).mean()')],
    'sampler-cfg': [('torch.lerp', 'return d_uncond + cfg_scale * (d_cond - d_uncond)',
                     'return torch.lerp(d_uncond, d_cond, cfg_scale)')],
}


def lesson_of(exercise):
    for p in notebooks_with_exercises(NBS):
        if exercise in find_exercises(read_notebook(p), p.name): return p.name
    raise KeyError(exercise)


def applies(source, old) -> bool:
    return old is not None and (old[1] if isinstance(old, tuple) else old) in source


def plant(source, old, new):
    "`source` with `old` (a snippet, or (REGION, snippet) for its whole region) replaced by `new`, inside a region."
    spans = []
    lines = source.splitlines(keepends=True)
    starts = [sum(len(l) for l in lines[:i]) for i in range(len(lines) + 1)]
    for a, b in regions(source, BEGIN_SOLUTION, END_SOLUTION):
        spans.append((starts[a + 1], starts[b]))                # the text between the markers
    if isinstance(old, tuple):
        span = next(s for s in spans if old[1] in source[s[0]:s[1]])
        return source[:span[0]] + new + source[span[1]:]
    k = source.find(old)
    assert source.count(old) == 1 and any(a <= k and k + len(old) <= b for a, b in spans), old
    return source[:k] + new + source[k + len(old):]


def _runs(lesson):
    "(lesson, [(exercise, kind, label, old, new)]) to run in one kernel: a control, the mutations, the alternatives."
    exs = find_exercises(read_notebook(NBS / lesson), lesson)
    out = []
    for ex in exs:
        out.append((ex, 'control', 'the reference answer', None, None))
        out += [(ex, caught, label, old, new) for caught, label, old, new in MUTATIONS[ex]]
        out += [(ex, 'alternative', label, old, new) for label, old, new in ALTERNATIVES.get(ex, [])]
    return out


def run_lesson(lesson, runs, tmp_path):
    "Verdicts {(exercise, label): (visible checks passed, all checks passed)} for `runs` of one lesson, one kernel."
    ref = read_notebook(NBS / lesson)
    stu = {c.get('id'): c for c in fill_answers(student_copy(ref, lesson), ref).cells}
    exs = find_exercises(ref, lesson)
    role = {}
    for e in exs.values():
        role.update({i: ('exercise', e.id) for i in e.solution_cells})
        role.update({i: ('check', e.id) for i in e.check_cells})
    last = max(role)
    runnable = lambda c: c.cell_type == 'code' and not SKIP_FLAGS & set(directives(c.source))
    sources, tags = [f"import sys\nsys.modules['sddit.{default_exp(ref)}'] = None"], [None]
    for i, c in enumerate(ref.cells[:last + 1]):               # the answered copy, up to the lesson's last check
        if runnable(c) and c.get('id') in stu: sources.append(stu[c.id].source); tags.append(None)
    for ex, kind, label, old, new in runs:
        e = exs[ex]
        for i in range(e.solution_cells[0], e.check_cells[-1] + 1):
            c = ref.cells[i]
            r = role.get(i, (None, None))
            if not runnable(c) or (r[0] and r[1] != ex): continue
            if r[0] == 'exercise':
                sources.append(plant(c.source, old, new) if applies(c.source, old) else c.source)
                tags.append(None)
            elif r[0] == 'check':
                sources += [stu[c.id].source, c.source]
                tags += [('visible', ex, label), ('all', ex, label)]
            else: sources.append(stu[c.id].source if c.get('id') in stu else c.source); tags.append(None)
        for i in e.solution_cells:                              # the reference answer again for what follows
            sources.append(ref.cells[i].source); tags.append(None)
    results = execute_cells(sources, timeout=180, cwd=tmp_path, memory_gb=0)
    verdict = defaultdict(lambda: [True, True])
    for r, tag in zip(results, tags):
        if tag is None: continue
        ok = r['status'] == 'passed'
        v = verdict[tag[1:]]
        if tag[0] == 'visible': v[0] &= ok
        v[1] &= ok
    return {k: tuple(v) for k, v in verdict.items()}, results


def test_the_table_covers_every_exercise():
    lessons = [p.name for p in notebooks_with_exercises(NBS)]
    assert lessons == LESSONS
    exercises = [e for n in lessons for e in find_exercises(read_notebook(NBS / n), n)]
    assert sorted(MUTATIONS) == sorted(exercises)
    for ex, wrong in MUTATIONS.items():
        assert len(wrong) >= 2 and any(caught == 'visible' for caught, *_ in wrong), ex
        assert {caught for caught, *_ in wrong} <= {'visible', 'hidden'}
    assert set(ALTERNATIVES) <= set(exercises)
    for ex, answers in {**MUTATIONS, **ALTERNATIVES}.items():        # each answer applies to exactly one region
        name = lesson_of(ex)
        ref = read_notebook(NBS / name)
        cells = [ref.cells[i].source for i in find_exercises(ref, name)[ex].solution_cells]
        for *_, old, new in answers:
            snippet = old[1] if isinstance(old, tuple) else old
            hits = [c for c in cells if snippet in c]
            assert len(hits) == 1, (ex, snippet)
            assert plant(hits[0], old, new) != hits[0]


LESSONS = ['01_edm.ipynb', '02_masking.ipynb', '03_dit.ipynb', '04_dino.ipynb', '05_teacher.ipynb', '06_losses.ipynb',
           '07_sampler.ipynb']


@pytest.mark.parametrize('lesson', LESSONS)
def test_wrong_answers_fail_and_alternatives_pass(lesson, tmp_path):
    runs = _runs(lesson)
    verdicts, results = run_lesson(lesson, runs, tmp_path)
    report = []
    for ex, kind, label, old, new in runs:
        visible_ok, all_ok = verdicts[(ex, label)]
        want = {'control': (True, True), 'alternative': (True, True), 'visible': (False, False),
                'hidden': (True, False)}[kind]
        report.append(f"{ex:<20} {kind:<11} visible {'pass' if visible_ok else 'FAIL'}, "
                      f"all {'pass' if all_ok else 'FAIL'}  {label}")
        assert (visible_ok, all_ok) == want, '\n'.join(report + [r['message'] for r in results if r['message']][-40:])
    print('\n'.join(report))
