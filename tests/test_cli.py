"""`python -m sddit.train` end to end: the files it promises, bad input, and an interrupt that loses nothing."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}
SHORT = ['--steps', '6', '--batch-size', '16', '--log-every', '2', '--sample-every', '4', '--ckpt-every', '3',
         '--sample-steps', '2']


def run(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, '-m', 'sddit.train', *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=timeout)


@pytest.mark.parametrize('method', ['sddit', 'dit'])
def test_short_run_writes_every_promised_file(tmp_path, method):
    out = tmp_path / 'run'
    r = run(*SHORT, '--method', method, '--out', str(out))
    assert r.returncode == 0, r.stderr
    for name in ['config.json', 'metrics.jsonl', 'loss.png', 'samples.png', 'ckpt.pt']:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert str(out / name) in r.stdout                       # it says where its files are
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['train']['method'] == method and cfg['train']['steps'] == 6
    assert cfg['model']['decoder_depth'] == (0 if method == 'dit' else 2)
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [2, 4, 6]
    for r in rows:
        assert {'step', 'loss', 'L_G', 'sigma_logmean', 'sigma_logstd', 'time', 'steps_per_s'} <= set(r)
        assert r['loss'] > 0 and r['time'] >= 0
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ck['step'] == 6 and {'model', 'ema', 'opt', 'rng_cpu'} <= set(ck)
    assert (out / 'samples' / 'step0000004.png').is_file()


def test_default_out_folder_is_runs_time(tmp_path):
    r = run(*SHORT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / 'runs').iterdir())
    assert len(runs) == 1 and (runs[0] / 'samples.png').is_file()


@pytest.mark.parametrize('args, message', [
    (['--mask-ratio', '1.2'], 'mask ratio must be in [0, 1), got 1.2'),
    (['--mask-ratio', '-0.1'], 'mask ratio must be in [0, 1), got -0.1'),
    (['--patch-size', '3'], 'image size 8 is not divisible by the patch size 3'),
    (['--preset', 'cifar10'], "unknown preset 'cifar10'"),
    (['--steps', '0'], '--steps must be a positive integer, got 0'),
    (['--steps', '-5'], '--steps must be a positive integer, got -5'),
    (['--method', 'mdt'], "unknown method 'mdt'"),
    (['--method', 'dit', '--mask-ratio', '0.3'], '--method dit trains without a mask'),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / 'run'
    r = run(*args, '--out', str(out), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not out.exists() and not (tmp_path / 'runs').exists()


def test_out_that_is_a_file(tmp_path):
    f = tmp_path / 'taken.txt'; f.write_text('keep me')
    r = run('--out', str(f))
    assert r.returncode == 2 and 'is a file' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f.read_text() == 'keep me'


def test_interrupt_saves_a_checkpoint_and_the_same_command_resumes(tmp_path):
    out = tmp_path / 'run'
    args = [sys.executable, '-m', 'sddit.train', '--steps', '400', '--batch-size', '16', '--log-every', '1',
            '--ckpt-every', '1000', '--sample-every', '1000', '--sample-steps', '2', '--out', str(out)]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = out / 'metrics.jsonl'
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert 'checkpoint saved' in err and 'resume' in err
    step = torch.load(out / 'ckpt.pt', weights_only=True)['step']
    assert 5 <= step < 400
    r = subprocess.run(args[:4] + [str(step + 3)] + args[5:], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f'resuming {out} at step {step}' in r.stdout
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r['step'] for r in rows] == list(range(1, step + 4))   # nothing lost, nothing repeated
