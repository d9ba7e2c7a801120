"""`python -m sddit.latents` end to end: shards + manifest, flip pairs, a SIGKILL and resume, torchrun, bad input."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sddit.imagenet import LatentShards, hflip, load_image
from sddit.imagenet import LATENT_SCALE as SCALE
from sddit.latents import SD_VAE_FT_EMA_CONFIG, main, random_vae

from conftest import run_module

ENV = {'OMP_NUM_THREADS': '1'}
TINY = dict(SD_VAE_FT_EMA_CONFIG, block_out_channels=[8, 16, 16, 16], norm_num_groups=8, layers_per_block=1)


def run(*args, env=None, timeout=300, module='sddit.latents'):
    return run_module(module, *args, env={**ENV, **(env or {})}, timeout=timeout)


def picture(w, h, seed):
    rng = np.random.default_rng(seed)
    a = (rng.random((h, w, 3)) * 200).astype(np.uint8)
    a[:, : w // 3] = (200, 30, 30)                       # left third red: the mirror differs
    return Image.fromarray(a)


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    """3 classes, 6 pictures (PNG and JPEG, assorted sizes), a truncated JPEG and a text file named .JPEG."""
    root = tmp_path_factory.mktemp('images') / 'train'
    sizes = {'cat/1.JPEG': (300, 256), 'cat/2.png': (256, 400), 'dog/3.png': (640, 480), 'dog/4.JPEG': (512, 300),
             'eel/5.png': (256, 256), 'eel/6.png': (400, 700)}
    for i, (name, (w, h)) in enumerate(sizes.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        picture(w, h, i).save(root / name)
    (root / 'dog/0_truncated.JPEG').write_bytes((root / 'cat/1.JPEG').read_bytes()[:200])
    (root / 'eel/7_notes.JPEG').write_text('not an image')
    return root


@pytest.fixture(scope='module')
def tiny_json(tmp_path_factory):
    f = tmp_path_factory.mktemp('vae') / 'tiny_vae.json'; f.write_text(json.dumps(TINY)); return f


@pytest.fixture(scope='module')
def ref(tree, tiny_json, tmp_path_factory):
    """One uninterrupted single-process encoding that the other runs are compared with; (folder, completed process)."""
    out = tmp_path_factory.mktemp('ref') / 'lat'
    r = encode(tree, out, tiny_json)
    assert r.returncode == 0, r.stderr
    return out, r


def encode(tree, out, tiny_json, *extra, env=None):
    return run('--images', str(tree), '--out', str(out), '--vae-config', str(tiny_json), '--shard-size', '3',
               '--batch-size', '2', '--workers', '0', '--device', 'cpu', *extra, env=env)


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob('shard-*.safetensors'))}


def test_shards_manifest_and_flip_pairs(tree, tiny_json, ref, capsys):
    out, r = ref
    assert str(out / 'manifest.json') in r.stdout and '6 of 8 images encoded (2 unreadable' in r.stdout
    m = json.loads((out / 'manifest.json').read_text())
    assert m['format'] == 'sddit-latents/1' and m['latent_shape'] == [4, 32, 32] and m['scale'] == 0.18215
    assert (m['store'], m['tensors'], m['dtype']) == ('mean_std', ['mean', 'std'], 'float32')
    assert m['classes'] == ['cat', 'dog', 'eel'] and m['num_classes'] == 3 and m['class_counts'] == [2, 2, 2]
    assert (m['num_images'], m['num_latents'], m['num_failures']) == (8, 6, 2)
    assert [f['path'] for f in m['failures']] == ['dog/0_truncated.JPEG', 'eel/7_notes.JPEG']
    assert all(f['error'] for f in m['failures'])
    assert [(s['file'], s['count'], s['first'], s['stop']) for s in m['shards']] == [
        ('shard-00000.safetensors', 2, 0, 3), ('shard-00001.safetensors', 3, 3, 6), ('shard-00002.safetensors', 1, 6, 8)]
    assert m['vae'].startswith('random:tiny_vae.json') and m['vae_config']['block_out_channels'] == [8, 16, 16, 16]
    assert m['image_size'] == 256 and m['crop'] == 'adm_center_crop'

    # the stored pair is (image, mirror), each 0.18215 × the posterior of a VAE built the same way
    vae = random_vae(TINY, seed=0)
    s = load_file(out / 'shard-00001.safetensors')       # dog/3.png, dog/4.JPEG, eel/5.png
    assert s['mean'].shape == s['std'].shape == (3, 2, 4, 32, 32)
    assert s['label'].tolist() == [1, 1, 2] and s['index'].tolist() == [3, 4, 5]
    x = load_image(tree / 'dog/4.JPEG')
    with torch.no_grad():
        d, dm = vae.encode(x[None]).latent_dist, vae.encode(hflip(x)[None]).latent_dist
    torch.testing.assert_close(s['mean'][1, 0], SCALE * d.mean[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s['std'][1, 0], SCALE * d.std[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s['mean'][1, 1], SCALE * dm.mean[0], atol=1e-4, rtol=1e-4)
    assert (s['mean'][1, 1] - s['mean'][1, 0]).abs().max() > 1e-3

    lat = LatentShards(out, flip=1, sample=False)
    assert len(lat) == 6 and lat.num_classes == 3 and lat.labels.tolist() == [0, 0, 1, 1, 2, 2]
    z, y = lat[3]
    assert z.shape == (4, 32, 32) and y == 1 and torch.equal(z, s['mean'][1, 1])

    before = shard_bytes(out)
    main(['--images', str(tree), '--out', str(out), '--vae-config', str(tiny_json), '--shard-size', '3', '--workers', '0',
          '--device', 'cpu'])                          # the same command on a finished folder: nothing to encode
    o = capsys.readouterr()
    assert '0 to go' in o.out and 'encoding' not in o.err and shard_bytes(out) == before


def test_sigkill_then_the_same_command_resumes(tree, tiny_json, ref, tmp_path):
    full, out = ref[0], tmp_path / 'killed'
    r = encode(tree, out, tiny_json, '--workers', '1', env={'SDDIT_LATENTS_KILL_AFTER_SHARDS': '1'})
    assert r.returncode == -9                           # SIGKILL right after shard 0 was renamed into place
    assert sorted(p.name for p in out.glob('shard-*')) == ['shard-00000.safetensors'] and not (out / 'manifest.json').exists()
    (out / '.shard-00001.safetensors.tmp4242').write_bytes(b'half a shard from a kill during a write')
    with pytest.raises(FileNotFoundError, match='has not finished'): LatentShards(out)
    first = (out / 'shard-00000.safetensors').stat()
    r = encode(tree, out, tiny_json, '--workers', '1')
    assert r.returncode == 0, r.stderr
    assert 'resuming' in r.stdout and '1 of 3 shards of rank 0 already written, 2 to go' in r.stdout
    again = (out / 'shard-00000.safetensors').stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)   # shard 0 was not rewritten
    assert shard_bytes(out) == shard_bytes(full)                                    # byte-identical to one clean run
    assert json.loads((out / 'manifest.json').read_text()) == json.loads((full / 'manifest.json').read_text())
    assert not list(out.glob('.shard-*'))                                           # the leftover is gone


def test_torchrun_two_processes_write_the_same_shards(tree, tiny_json, ref, tmp_path):
    one, two = ref[0], tmp_path / 'two'
    r = run('--standalone', '--nproc_per_node', '2', '-m', 'sddit.latents', '--images', str(tree), '--out', str(two),
            '--vae-config', str(tiny_json), '--shard-size', '3', '--batch-size', '2', '--workers', '0', '--device', 'cpu',
            module='torch.distributed.run')
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('images encoded') == 1       # only rank 0 writes the manifest and reports
    assert shard_bytes(two) == shard_bytes(one)
    assert json.loads((two / 'manifest.json').read_text()) == json.loads((one / 'manifest.json').read_text())


def test_store_sample_float16(tree, tiny_json, ref, tmp_path):
    out, ref = tmp_path / 'sample', ref[0]
    r = encode(tree, out, tiny_json, '--store', 'sample', '--dtype', 'float16', '--seed', '0')
    assert r.returncode == 0, r.stderr
    m = json.loads((out / 'manifest.json').read_text())
    assert (m['store'], m['tensors'], m['dtype']) == ('sample', ['sample'], 'float16')
    s, ms = load_file(out / 'shard-00000.safetensors'), load_file(ref / 'shard-00000.safetensors')
    assert set(s) == {'sample', 'label', 'index'} and s['sample'].dtype == torch.float16
    eps = (s['sample'].float() - ms['mean']) / ms['std']                  # one draw s·(μ + σε)
    assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1) < 0.1
    z, _ = LatentShards(out)[0]
    assert z.dtype == torch.float32 and z.shape == (4, 32, 32)


def test_full_size_sd_vae_architecture(tree, tmp_path):
    """sd-vae-ft-ema's own architecture (random weights): 8× down-sampling to 4×32×32."""
    keep = tmp_path / 'one'                              # one picture: the full-width VAE is slow on a CPU
    (keep / 'cat').mkdir(parents=True)
    (keep / 'cat/1.JPEG').write_bytes((tree / 'cat/1.JPEG').read_bytes())
    out = tmp_path / 'lat'
    r = run('--images', str(keep), '--out', str(out), '--vae-config', 'sd-vae-ft-ema', '--workers', '0', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    m = json.loads((out / 'manifest.json').read_text())
    assert m['latent_shape'] == [4, 32, 32] and m['vae_config']['block_out_channels'] == [128, 256, 512, 512]
    assert load_file(out / 'shard-00000.safetensors')['mean'].shape == (1, 2, 4, 32, 32)


def test_a_saved_vae_folder_loads_offline(tree, tmp_path):
    folder = tmp_path / 'sd' / 'vae'
    random_vae(TINY, seed=1).save_pretrained(folder)        # a Stable Diffusion folder: the VAE in vae/
    out = tmp_path / 'lat'
    main(['--images', str(tree), '--out', str(out), '--vae', str(tmp_path / 'sd'), '--workers', '0', '--device', 'cpu'])
    assert json.loads((out / 'manifest.json').read_text())['vae'] == str(tmp_path / 'sd')


def test_a_hub_id_that_cannot_be_downloaded_is_one_clear_line(tree, tmp_path):
    out = tmp_path / 'lat'
    r = run('--images', str(tree), '--out', str(out), '--vae', 'stabilityai/sd-vae-ft-ema', '--device', 'cpu',
            env={'HF_HOME': str(tmp_path / 'empty-hf-cache')})
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sddit.latents: error: cannot load the VAE 'stabilityai/sd-vae-ft-ema'")
    assert 'hf download stabilityai/sd-vae-ft-ema --local-dir sd-vae-ft-ema' in lines[0] and '--vae ./sd-vae-ft-ema' in lines[0]
    assert not out.exists()


@pytest.mark.parametrize('case, message', [
    ('no-vae', 'give exactly one of --vae'),
    ('missing-images', 'does not exist'),
    ('no-class-folders', 'no class folders'),
    ('no-images', 'no images'),
    ('out-is-file', 'is a file'),
    ('shard-size', '--shard-size must be a positive integer, got 0'),
    ('batch-size', '--per-proc-batch-size must be a positive integer, got -1'),
    ('store', "--store must be one of mean_std, sample, got 'both'"),
    ('vae-path', 'no such folder'),
    ('vae-folder', 'expected a diffusers AutoencoderKL folder'),
    ('other-run', 'comes from another encoding (different vae'),
])
def test_bad_input_is_one_line_exit_2(tree, tiny_json, ref, tmp_path, capsys, case, message):
    out = tmp_path / 'lat'
    args = ['--images', str(tree), '--out', str(out), '--workers', '0', '--device', 'cpu', '--shard-size', '3']
    vae = ['--vae-config', str(tiny_json)]
    if case == 'no-vae': vae = []
    elif case == 'missing-images': args[1] = str(tmp_path / 'nope')
    elif case == 'no-class-folders': (tmp_path / 'flat').mkdir(); args[1] = str(tmp_path / 'flat')
    elif case == 'no-images':
        (tmp_path / 'empty' / 'cls').mkdir(parents=True); args[1] = str(tmp_path / 'empty')
    elif case == 'out-is-file': out.write_text('keep me')
    elif case == 'shard-size': args += ['--shard-size', '0']
    elif case == 'batch-size': args += ['--batch-size', '-1']
    elif case == 'store': args += ['--store', 'both']
    elif case == 'vae-path': vae = ['--vae', str(tmp_path / 'no-vae-here')]
    elif case == 'vae-folder': (tmp_path / 'v').mkdir(); vae = ['--vae', str(tmp_path / 'v')]
    elif case == 'other-run':
        shutil.copytree(ref[0], out)
        vae = ['--vae-config', str(tiny_json), '--seed', '1']
    capsys.readouterr()
    with pytest.raises(SystemExit) as e: main([*args, *vae])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('sddit.latents: error: ') and message in lines[0], err
    if case == 'out-is-file': assert out.read_text() == 'keep me'
    if case not in ('other-run', 'out-is-file'): assert not out.exists()
