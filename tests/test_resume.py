"""Training that never loses work: SIGKILL after a checkpoint and a restart land bitwise on the uninterrupted run;
a damaged checkpoint is never taken as the latest; a run whose loss stops being finite stops and names the last
good checkpoint."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import torch

from conftest import ENV as BASE_ENV

ENV = {**BASE_ENV, 'OMP_NUM_THREADS': '1'}
PARTS = ('model', 'ema', 'opt', 'head', 'teacher', 'dino')


def cmd(out, steps, *extra):
    return [sys.executable, '-m', 'sddit.train', '--steps', str(steps), '--batch-size', '16', '--log-every', '1',
            '--sample-every', '0', '--eval-every', '0', '--ckpt-every', '5', '--keep-ckpts', '2', '--out', str(out), *extra]


def run(out, steps, *extra):
    return subprocess.run(cmd(out, steps, *extra), capture_output=True, text=True, env=ENV, timeout=600)


def assert_same_state(a, b):
    for part in PARTS:
        x, y = a[part], b[part]
        if part == 'opt':
            x, y = x['state'], y['state']
            assert x.keys() == y.keys()
            for k in x:
                for name in x[k]: assert torch.equal(x[k][name], y[k][name]), (part, k, name)
            continue
        assert x.keys() == y.keys()
        for k in x: assert torch.equal(x[k], y[k]), (part, k)


def test_sigkill_after_a_checkpoint_then_restart_is_bitwise_the_uninterrupted_run(tmp_path):
    steps = 60
    ref, killed = tmp_path / 'ref', tmp_path / 'killed'
    r = run(ref, steps)
    assert r.returncode == 0, r.stderr[-3000:]
    p = subprocess.Popen(cmd(killed, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / 'ckpt-0000010.pt').exists():     # two checkpoints written
        time.sleep(0.02)
    assert p.poll() is None, 'the run finished before it could be killed'
    p.send_signal(signal.SIGKILL); p.wait()
    step = torch.load(killed / 'ckpt.pt', weights_only=True)['step']
    assert 10 <= step < steps
    r = run(killed, steps)                                                           # the same command again
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'resuming {killed} at step' in r.stdout
    a, b = (torch.load(d / 'ckpt.pt', weights_only=True) for d in (ref, killed))
    assert a['step'] == b['step'] == steps
    assert_same_state(a, b)
    rows = [json.loads(l) for l in (killed / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == list(range(1, steps + 1))                    # nothing lost, nothing twice
    ref_rows = [json.loads(l) for l in (ref / 'metrics.jsonl').read_text().splitlines()]
    assert [r['loss'] for r in rows] == [r['loss'] for r in ref_rows]
    assert sorted(f for f in os.listdir(killed) if f.startswith(('ckpt', '.ckpt'))) == \
        ['ckpt-0000055.pt', 'ckpt-0000060.pt', 'ckpt.pt']                          # the last 2 kept, no temporaries


def test_a_truncated_latest_checkpoint_is_never_loaded(tmp_path):
    out = tmp_path / 'run'
    r = run(out, 10)
    assert r.returncode == 0, r.stderr[-3000:]
    size = (out / 'ckpt.pt').stat().st_size
    with open(out / 'ckpt.pt', 'r+b') as f: f.truncate(size // 3)        # ckpt.pt and ckpt-0000010.pt: one file
    (out / '.ckpt-0000015.pt.tmp999').write_bytes(b'PK\x03\x04')         # and a write that was killed midway
    r = run(out, 12)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'skipping damaged checkpoint' in r.stderr and 'ckpt-0000010.pt' in r.stderr
    assert f'resuming {out} at step 5 from ckpt-0000005.pt' in r.stdout
    assert torch.load(out / 'ckpt.pt', weights_only=True)['step'] == 12
    assert not (out / '.ckpt-0000015.pt.tmp999').exists()
    rows = [json.loads(l)['step'] for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert rows == list(range(1, 13))


def test_non_finite_losses_stop_the_run_and_name_the_last_good_checkpoint(tmp_path):
    out = tmp_path / 'run'
    # lr 1e30: the first update throws the weights to ±1e30, after which every loss is ∞ or NaN and is skipped
    r = run(out, 40, '--lr', '1e30', '--ckpt-every', '1', '--max-bad-steps', '3', '--keep-ckpts', '1')
    assert r.returncode == 1, r.stderr[-3000:]
    msg = r.stderr.strip().splitlines()[-1]
    assert 'the loss was not finite for 3 steps in a row' in msg and 'the last good checkpoint is' in msg, msg
    good = Path(msg.split('the last good checkpoint is ')[1].split(' ')[0].rstrip('.'))
    st = torch.load(good, weights_only=True)
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert rows[-1]['skipped'] >= 3 and st['step'] < rows[-1]['step']
    first_bad = next(r['step'] for r in rows if r['skipped'] > 0)
    assert st['step'] == first_bad - 1                                    # the state before the first bad step
    assert all(torch.isfinite(v).all() for v in st['model'].values())
