"""`python -m sddit.sample` and `python -m sddit.evaluate` end to end on a short digits run: files, keys, bad input."""
import json, os, subprocess, sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ENV, run_module as run, assert_one_line_error as one_line_exit_2


@pytest.fixture(scope='module')
def run_dir(tiny_run):
    return tiny_run


@pytest.fixture(scope='module')
def samples(run_dir):
    out = run_dir.parent / 'samples' / 'digits.npz'
    r = run('sddit.sample', '--ckpt', run_dir, '--n', 30, '--cfg-scale', 2, '--sample-steps', 2, '--per-proc-batch-size', 8,
            '--out', out)
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and str(out.with_suffix('.png')) in r.stdout
    return out


def test_sample_writes_adm_npz_and_grid(samples):
    z = np.load(samples)
    assert sorted(z.files) == ['arr_0', 'arr_1']
    assert z['arr_0'].shape == (30, 8, 8, 1) and z['arr_0'].dtype == np.uint8
    assert z['arr_1'].tolist() == [i % 10 for i in range(30)]          # balanced labels, cycling over the classes
    assert z['arr_0'].std() > 0
    assert samples.with_suffix('.png').stat().st_size > 0


def test_sample_is_a_function_of_seed_not_of_batch_size(run_dir, samples, tmp_path):
    out = tmp_path / 'b.npz'
    r = run('sddit.sample', '--ckpt', run_dir / 'ckpt.pt', '--n', 12, '--cfg', 2, '--steps', 2, '--batch-size', 5,
            '--out', out)                                                  # the older spellings still work
    assert r.returncode == 0, r.stderr
    a, b = np.load(samples)['arr_0'][:12].astype(int), np.load(out)['arr_0'].astype(int)
    assert np.abs(a - b).max() <= 1                                        # float rounding at most
    r = run('sddit.sample', '--ckpt', run_dir, '--n', 12, '--cfg-scale', 2, '--sample-steps', 2, '--seed', 1,
            '--out', tmp_path / 'c.npz')
    assert r.returncode == 0 and not np.array_equal(np.load(tmp_path / 'c.npz')['arr_0'], np.load(out)['arr_0'])


def test_sample_grid_only_and_class_labels(run_dir, tmp_path):
    out = tmp_path / 'g.png'
    r = run('sddit.sample', '--ckpt', run_dir, '--n', 6, '--sample-steps', 2, '--class-labels', '3,7', '--out', out)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and not list(tmp_path.glob('*.npz'))
    r = run('sddit.sample', '--ckpt', run_dir, '--n', 4, '--sample-steps', 2, '--class-labels', '3,7',
            '--out', tmp_path / 'l.npz')
    assert np.load(tmp_path / 'l.npz')['arr_1'].tolist() == [3, 7, 3, 7]


def test_evaluate_prints_and_writes_metrics(samples):
    r = run('sddit.evaluate', '--samples', samples, '--ref', 'digits')
    assert r.returncode == 0, r.stderr
    out = samples.with_name('digits.metrics.json')
    assert str(out) in r.stdout and 'FID' in r.stdout and 'class accuracy' in r.stdout
    m = json.loads(out.read_text())
    assert {'fid', 'isc', 'kid', 'precision', 'recall', 'class_acc', 'n_samples', 'n_ref', 'feature_extractor',
            'samples', 'ref', 'time_s'} <= set(m)
    assert m['n_samples'] == 30 and m['n_ref'] == 359 and m['feature_extractor'] == 'sddit-digits'
    assert m['fid'] > 0 and 0 <= m['class_acc'] <= 1


def test_evaluate_real_digits_beat_a_6_step_model(samples, tmp_path):
    from sddit.metrics import digits_reference
    x, y = digits_reference('train')
    np.savez(tmp_path / 'real.npz', x[:30].permute(0, 2, 3, 1).numpy(), y[:30].numpy())
    r = run('sddit.evaluate', '--samples', tmp_path / 'real.npz', '--ref', 'digits', '--metrics', 'fid',
            '--out', tmp_path / 'real.json')
    assert r.returncode == 0, r.stderr
    real = json.loads((tmp_path / 'real.json').read_text())
    model = json.loads(samples.with_name('digits.metrics.json').read_text())
    assert set(real) >= {'fid', 'class_acc'} and 'kid' not in real
    assert real['fid'] < model['fid'] and real['class_acc'] > 0.9


def test_evaluate_folder_of_images_against_stats_npz(samples, tmp_path):
    from PIL import Image
    from sddit.metrics import reference_stats, digits_reference
    imgs = np.load(samples)['arr_0']
    (tmp_path / 'f').mkdir()
    for i, a in enumerate(imgs): Image.fromarray(a[..., 0]).save(tmp_path / 'f' / f'{i:04d}.png')
    np.savez(tmp_path / 'ref.npz', **reference_stats(digits_reference('test')[0]))
    r = run('sddit.evaluate', '--samples', tmp_path / 'f', '--ref', tmp_path / 'ref.npz', '--feature-extractor', 'sddit-digits')
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / 'f.metrics.json').read_text())
    full = json.loads(samples.with_name('digits.metrics.json').read_text())
    assert set(m) >= {'fid', 'isc'} and 'kid' not in m                    # statistics alone allow FID and IS
    assert abs(m['fid'] - full['fid']) < 1e-6 * full['fid']                 # the same FID as against the images


@pytest.mark.parametrize('args, message', [
    (['--ckpt', '{tmp}/missing', '--n', '4'], 'no checkpoint'),
    (['--n', '0'], '--n must be a positive integer, got 0'),
    (['--n', '-3'], '--n must be a positive integer, got -3'),
    (['--sample-steps', '0'], '--sample-steps must be a positive integer, got 0'),
    (['--per-proc-batch-size', '0'], '--per-proc-batch-size must be a positive integer, got 0'),
    (['--out', '{tmp}/x.jpg'], 'end it in .npz'),
    (['--class-labels', '12'], '--class-labels 12 is not a class'),
    (['--class-labels', 'a,b'], 'comma-separated integers'),
    (['--vae', '{tmp}/vae'], 'pixel-space model'),
])
def test_sample_bad_input(run_dir, tmp_path, args, message):
    base = {'--ckpt': str(run_dir), '--n': '4', '--sample-steps': '1', '--out': str(tmp_path / 'o.npz')}
    for k, v in zip(args[::2], args[1::2]): base[k] = v.format(tmp=tmp_path)
    r = run('sddit.sample', *[x for kv in base.items() for x in kv])
    one_line_exit_2(r, message, prog='sddit.sample')
    assert not list(tmp_path.glob('o.*'))


def test_sample_corrupt_checkpoint(tmp_path):
    (tmp_path / 'ckpt.pt').write_bytes(b'not a checkpoint')
    one_line_exit_2(run('sddit.sample', '--ckpt', tmp_path / 'ckpt.pt', '--out', tmp_path / 'o.npz'), 'cannot load it')
    assert not (tmp_path / 'o.npz').exists()


@pytest.mark.parametrize('args, message', [
    (['--samples', '{tmp}/none.npz'], 'no such file'),
    (['--samples', '{tmp}/bad.npz'], "no 'arr_0'"),
    (['--samples', '{tmp}/empty'], 'holds no images'),
    (['--ref', '{tmp}/none'], '--ref'),
    (['--metrics', 'fid,ppl'], "unknown metric 'ppl'"),
    (['--feature-extractor', 'clip'], "unknown --feature-extractor 'clip'"),
    (['--feature-extractor', 'inception-v3-compat', '--fid-weights', '{tmp}/no.pth'], '--fid-weights'),
])
def test_evaluate_bad_input(samples, tmp_path, args, message):
    np.savez(tmp_path / 'bad.npz', foo=np.zeros(3)); (tmp_path / 'empty').mkdir()
    base = {'--samples': str(samples), '--ref': 'digits', '--out': str(tmp_path / 'm.json')}
    for k, v in zip(args[::2], args[1::2]): base[k] = v.format(tmp=tmp_path)
    one_line_exit_2(run('sddit.evaluate', *[x for kv in base.items() for x in kv]), message)
    assert not (tmp_path / 'm.json').exists()


def test_evaluate_offline_without_inception_weights(samples, tmp_path):
    "No --fid-weights and nothing in torch hub's cache: one line naming the file to fetch and the flag."
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    env = {**ENV, 'TORCH_HOME': str(tmp_path / 'torch')}
    code = (f"import sddit.metrics as m\n"
            f"def offline(url, timeout=60): raise OSError('offline')\n"
            f"m._download = offline\n"                                   # as offline, even on a machine with internet
            f"from sddit.evaluate import main\n"
            f"main(['--samples', '{samples}', '--ref', 'digits', '--feature-extractor', 'inception-v3-compat', "
            f"'--out', '{tmp_path}/m.json'])\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    one_line_exit_2(r, URL_INCEPTION_V3)
    assert '--fid-weights' in r.stderr


def test_latent_checkpoint_is_decoded_by_the_vae(tmp_path):
    from diffusers import AutoencoderKL
    from sddit.dit import SDDiT, model_config
    from sddit.edm import EDMPrecond
    from sddit.checkpoint import save_checkpoint
    torch.manual_seed(0)
    m = EDMPrecond(SDDiT(model_config('digits', in_channels=4, input_size=4)))
    save_checkpoint(tmp_path / 'ckpt.pt', ema=m.state_dict(), model=m.state_dict(), config=dict(model=asdict(m.net.cfg)), step=0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8], layers_per_block=1,
                  norm_num_groups=4, down_block_types=['DownEncoderBlock2D'] * 2,
                  up_block_types=['UpDecoderBlock2D'] * 2).save_pretrained(tmp_path / 'vae')
    r = run('sddit.sample', '--ckpt', tmp_path, '--n', 3, '--sample-steps', 2, '--vae', tmp_path / 'vae',
            '--out', tmp_path / 's.npz')
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / 's.npz')['arr_0'].shape == (3, 8, 8, 3)       # 4×4 latents → 8×8 RGB
    one_line_exit_2(run('sddit.sample', '--ckpt', tmp_path, '--n', 3, '--vae', tmp_path / 'novae', '--out', tmp_path / 't.npz'),
                    'no such folder')


@pytest.mark.skipif(not torch.distributed.is_available(), reason='no torch.distributed')
def test_torchrun_two_processes_give_the_single_process_samples(run_dir, samples, tmp_path):
    out = tmp_path / 'ddp.npz'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        '-m', 'sddit.sample', '--ckpt', str(run_dir), '--num-samples', '30', '--cfg-scale', '2',
                        '--sample-steps', '2', '--per-proc-batch-size', '8', '--device', 'cpu', '--out', str(out)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = np.load(samples), np.load(out)
    assert np.abs(a['arr_0'].astype(int) - b['arr_0'].astype(int)).max() <= 1
    assert np.array_equal(a['arr_1'], b['arr_1'])
