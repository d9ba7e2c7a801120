"""`python -m sddit.train` end to end: the files it promises, bad input, and an interrupt that loses nothing."""
import importlib.util, json, os, signal, subprocess, sys, time
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
    for row in rows:
        assert {'step', 'loss', 'L_G', 'sigma_logmean', 'sigma_logstd', 'time', 'steps_per_s'} <= set(row)
        assert row['loss'] > 0 and row['time'] >= 0
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ck['step'] == 6 and {'model', 'ema', 'opt', 'rng_cpu'} <= set(ck)
    assert (out / 'samples' / 'step0000004.png').is_file()
    if importlib.util.find_spec('tensorboard') is not None:                # TensorBoard events, or one line saying why not
        assert list((out / 'tb').glob('events.out.tfevents.*'))
    else:
        assert r.stdout.count('TensorBoard logging skipped') == 1 and not (out / 'tb').exists()


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


# --- latent shards, the ImageNet presets, precision, evaluation (issue 5 and issue 4's trainer hook) ---

from sddit.imagenet import random_latent_shards
from sddit.train import main, train, TrainConfig


def bad(argv, capsys):
    "Run main(argv) in-process; return (exit code, stderr lines)."
    with pytest.raises(SystemExit) as e: main(argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    return random_latent_shards(tmp_path_factory.mktemp('lat') / 'ok', n=12, num_classes=3, shard_size=5)


def test_missing_data_path(tmp_path, capsys):
    code, err = bad(['--preset', 'imagenet256-s', '--data', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'run')], capsys)
    assert code == 2 and len(err) == 1 and f'--data {tmp_path / "nowhere"}: no such folder' in err[0], err
    assert not (tmp_path / 'run').exists()
    code, err = bad(['--preset', 'imagenet256-b', '--out', str(tmp_path / 'run')], capsys)
    assert code == 2 and len(err) == 1 and 'trains on latent shards: pass --data PATH' in err[0], err


def test_empty_shard_folder(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    code, err = bad(['--preset', 'imagenet256-s', '--data', str(tmp_path / 'empty'), '--out', str(tmp_path / 'run')], capsys)
    assert code == 2 and len(err) == 1 and f'no latents at {tmp_path / "empty"} (no manifest.json)' in err[0], err
    assert not (tmp_path / 'run').exists()


def test_shards_of_the_wrong_shape(tmp_path, capsys):
    small = random_latent_shards(tmp_path / 'small', n=4, latent_shape=(4, 16, 16))
    code, err = bad(['--preset', 'imagenet256-s', '--data', str(small), '--out', str(tmp_path / 'run')], capsys)
    assert code == 2 and len(err) == 1, err
    assert 'holds 4×16×16 items, but preset imagenet256-s (model DiT-S/2) takes 4×32×32' in err[0]
    assert not (tmp_path / 'run').exists()


def test_checkpoint_from_another_preset(tmp_path, shards, capsys):
    out = tmp_path / 'run'
    train(TrainConfig(steps=2, batch_size=8, sample_every=0, eval_every=0, log_every=1, ckpt_every=1, out=str(out)), quiet=True)
    before = {f: (out / f).stat().st_mtime_ns for f in os.listdir(out) if (out / f).is_file()}
    code, err = bad(['--preset', 'imagenet256-s', '--data', str(shards), '--out', str(out)], capsys)
    assert code == 2 and len(err) == 1, err
    assert 'was written by a run with --preset digits, this one has imagenet256-s' in err[0] and 'new --out' in err[0]
    assert {f: (out / f).stat().st_mtime_ns for f in os.listdir(out) if (out / f).is_file()} == before   # untouched


@pytest.mark.parametrize('args, message', [
    (['--batch-size', '10', '--accum', '3'], 'the global batch 10 does not split over 1 process(es) × 3 accumulation step(s)'),
    (['--precision', 'tf32'], '--precision tf32 is a CUDA tensor-core mode'),
    (['--precision', 'fp16'], "unknown precision 'fp16'"),
    (['--keep-ckpts', '0'], '--keep-ckpts must be a positive integer, got 0'),
    (['--accum', '0'], '--accum must be a positive integer, got 0'),
])
def test_bad_scale_settings(tmp_path, capsys, args, message):
    code, err = bad([*args, '--out', str(tmp_path / 'run')], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / 'run').exists()


def test_eval_every_is_for_digits(tmp_path, shards, capsys):
    code, err = bad(['--preset', 'imagenet256-s', '--data', str(shards), '--eval-every', '10', '--out', str(tmp_path / 'r')], capsys)
    assert code == 2 and len(err) == 1 and '--eval-every scores digits models' in err[0], err


def test_imagenet_preset_reads_latent_shards(tmp_path, shards):
    out = tmp_path / 'run'
    r = run('--preset', 'imagenet256-s', '--data', str(shards), '--steps', '2', '--batch-size', '4', '--workers', '1',
            '--log-every', '1', '--sample-every', '0', '--ckpt-every', '2', '--out', str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['model']['num_classes'] == 3 and cfg['model']['hidden_size'] == 384 and cfg['model']['decoder_depth'] == 8
    assert cfg['data']['kind'] == 'latents' and cfg['data']['n'] == 12 and cfg['train']['head_out_dim'] == 8192
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [1, 2] and all(r['loss'] > 0 for r in rows)
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ck['step'] == 2 and ck['data'] == dict(position=8, global_batch=4, n=12, seed=0)


def test_bf16_autocast_on_the_cpu(tmp_path):
    out = tmp_path / 'run'
    r = run('--precision', 'bf16', '--steps', '4', '--batch-size', '16', '--log-every', '1', '--sample-every', '0',
            '--eval-every', '0', '--out', str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert len(rows) == 4 and all(r['loss'] is not None and 0 < r['loss'] < 1e3 and r['skipped'] == 0 for r in rows)
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    assert all(v.dtype == torch.float32 for v in ck['model'].values())   # fp32 master weights


def test_eval_every_writes_fid_and_class_accuracy(tmp_path):
    out = tmp_path / 'run'
    r = run('--steps', '4', '--batch-size', '16', '--log-every', '1', '--sample-every', '0', '--eval-every', '2',
            '--eval-per-class', '5', '--eval-steps', '2', '--out', str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    ev = [r for r in rows if 'fid' in r]
    assert [r['step'] for r in ev] == [2, 4]
    assert all(r['fid'] > 0 and 0 <= r['class_acc'] <= 1 for r in ev)
    assert (out / 'fid.png').stat().st_size > 0 and str(out / 'fid.png') in r.stdout


@pytest.mark.slow
def test_compiled_and_eager_losses_agree(tmp_path):
    common = ['--steps', '2', '--batch-size', '16', '--log-every', '1', '--sample-every', '0', '--eval-every', '0']
    eager, comp = run(*common, '--out', str(tmp_path / 'e')), run(*common, '--compile', '--out', str(tmp_path / 'c'), timeout=900)
    assert eager.returncode == 0 and comp.returncode == 0, comp.stderr[-3000:]
    le, lc = ([json.loads(l)['loss'] for l in (tmp_path / d / 'metrics.jsonl').read_text().splitlines()] for d in 'ec')
    assert lc == pytest.approx(le, rel=1e-4)
