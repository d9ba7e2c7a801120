"""`python -m sddit.bench` as a smoke test: it runs the digits preset for the three methods and prints its table.
No timing is asserted (speed lives in the benchmark's output, not in tests)."""
import json, os, subprocess, sys
from pathlib import Path

ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg'}


def test_bench_smoke(tmp_path):
    js = tmp_path / 'bench.json'
    r = subprocess.run([sys.executable, '-m', 'sddit.bench', '--steps', '2', '--warmup', '1', '--runs', 'digits:32',
                        '--json', str(js)], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('| model | method |') and r.stdout.count('| digits |') == 3
    rows = json.loads(js.read_text())['rows']
    assert [x['method'] for x in rows] == ['sddit', 'maskdit', 'dit'] and all(x['batch'] == 32 for x in rows)
    for x in rows:
        assert x['ms'] > 0 and x['tflops'] > 0 and x['gmacs_per_img'] > 0
    sd, md, dit = (x['gmacs_per_img'] for x in rows)
    assert sd > md > 0 and sd > dit                                    # the SD-DiT step does the most arithmetic


def test_bench_bad_input():
    r = subprocess.run([sys.executable, '-m', 'sddit.bench', '--runs', 'digits:many'], capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["sddit.bench: error: --runs takes PRESET or PRESET:BATCH, got 'digits:many'"]
    r = subprocess.run([sys.executable, '-m', 'sddit.bench', '--runs', 'cifar'], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2 and "unknown preset 'cifar'" in r.stderr


def test_cls_probe_shows_the_identical_cls_start(tmp_path):
    "bench/cls_probe.py runs; under adaLN-Zero every image's [CLS] starts identical (per-image entropy = that of the mean), the pooled start does not."
    script = Path(__file__).parents[1] / 'bench' / 'cls_probe.py'
    r = subprocess.run([sys.executable, str(script), '--steps', '4', '--variants', 'paper', 'pool', 'sharp'], capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'MPLBACKEND': 'Agg'})
    assert r.returncode == 0, r.stderr
    rows = {l.split('|')[1].strip(): [float(v) for v in l.split('|')[3:8]] for l in r.stdout.splitlines()
            if l.startswith('| ') and l.split('|')[1].strip() in ('paper', 'pool', 'sharp')}
    assert set(rows) == {'paper', 'pool', 'sharp'}
    assert abs(rows['paper'][0] - rows['paper'][1]) < 1e-3            # one [CLS] distribution for every image
    assert rows['pool'][1] - rows['pool'][0] > 5e-3                   # image-dependent: the mean is flatter than each
    assert rows['sharp'][0] < rows['paper'][0] - 1                    # τ_T = 0.01 is in force: a far sharper teacher
