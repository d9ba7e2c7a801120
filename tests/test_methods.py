"""The paper's three methods and its ablations are switches of one trainer: each runs on digits and logs what it trains."""
import json

import pytest
import torch

from conftest import run_module
SHORT = ['--steps', '4', '--batch-size', '16', '--log-every', '2', '--sample-every', '1000', '--ckpt-every', '1000',
         '--sample-steps', '2']
DISC_KEYS = {'L_D', 'L_D_cls', 'L_D_patch', 'entropy_patch', 'entropy_cls', 'token_entropy_patch', 'tau_t',
             'teacher_momentum', 'log_K'}


def train(tmp_path, *args):
    out = tmp_path / 'run'
    r = run_module('sddit.train', *SHORT, '--out', out, *args, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    cfg = json.loads((out / 'config.json').read_text())
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    assert (out / 'samples.png').is_file() and (out / 'loss.png').is_file()
    return rows, cfg, ck


@pytest.mark.parametrize('args, disc, mask, extra', [
    ([], True, 0.2, set()),                                            # SD-DiT
    (['--no-disc'], False, 0.2, set()),                                # w/o L_D (Table 3)
    (['--mask-ratio', '0'], True, 0.0, set()),                         # w/o mask (Table 3)
    (['--teacher-sigma', 'same'], True, 0.2, set()),                   # Fig. 6
    (['--teacher-sigma', '0.5'], True, 0.2, set()),
    (['--method', 'maskdit'], False, 0.5, {'L_MAE'}),
    (['--method', 'dit'], False, 0.0, set()),
])
def test_method_runs_and_logs_its_losses(tmp_path, args, disc, mask, extra):
    rows, cfg, ck = train(tmp_path, *args)
    assert cfg['loss']['mask_ratio'] == mask and cfg['loss']['disc'] == disc
    for r in rows:
        assert (DISC_KEYS <= set(r)) == disc and extra <= set(r)
        if disc:
            assert 0 < r['entropy_patch'] <= r['log_K'] + 1e-4 and r['token_entropy_patch'] <= r['entropy_patch'] + 1e-4
            assert 0.04 <= r['tau_t'] <= 0.07 and 0.996 <= r['teacher_momentum'] <= 0.999
            assert abs(r['loss'] - (r['L_G'] + r['L_D'])) < 1e-4 * max(1, r['loss'])
    assert ({'head', 'teacher', 'dino'} <= set(ck)) == disc               # the teacher and centres are checkpointed
    if '--method' in args and 'maskdit' in args:
        assert any(k.endswith('mask_token') for k in ck['model'])


def test_teacher_is_an_ema_of_the_student(tmp_path):
    _, _, ck = train(tmp_path)
    enc = {k[len('net.encoder.'):]: v for k, v in ck['model'].items() if k.startswith('net.encoder.')}
    t_enc = {k[len('encoder.'):]: v for k, v in ck['teacher'].items() if k.startswith('encoder.')}
    assert set(t_enc) == set(enc)
    moved = [k for k in enc if not torch.equal(enc[k], t_enc[k])]
    assert moved                                                        # the student trained, the teacher lags behind
    for k in moved:                                                      # ... but stays close (β ≥ 0.996 over 4 steps)
        assert (enc[k] - t_enc[k]).abs().max() < 0.1
