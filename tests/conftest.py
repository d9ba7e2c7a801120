"""What the test files share: a command's environment, `python -m sddit.X` in a subprocess, the one-line error every
command prints on bad input, and a tiny finished run folder."""
import os, subprocess, sys
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')       # a hub call fails at once instead of retrying for 25 s
os.environ.setdefault('MPLBACKEND', 'Agg')
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}
ROOT = Path(__file__).parents[1]
TINY = ['--steps', '6', '--batch-size', '16', '--log-every', '2', '--sample-every', '4', '--ckpt-every', '3',
        '--sample-steps', '2']                      # a digits run that writes every file, in seconds


def run_module(module: str, *args, env: dict | None = None, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    "`python -m module args…` (arguments turned into strings) with the test environment (plus `env`)."
    return subprocess.run([sys.executable, '-m', module, *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, cwd=cwd, timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess, message: str, prog: str | None = None):
    "Exit code 2 and exactly one line on stderr, holding `message` (and starting `prog: error:` when given)."
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and message in lines[0], r.stderr[-3000:]
    if prog is not None: assert lines[0].startswith(f'{prog}: error: '), lines[0]


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory) -> Path:
    "A finished 6-step digits SD-DiT run folder, shared by the tests that only read one."
    out = tmp_path_factory.mktemp('runs') / 'tiny'
    r = run_module('sddit.train', *TINY, '--out', out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out
