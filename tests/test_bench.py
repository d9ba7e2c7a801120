"""`python -m sddit.bench` as a smoke test: it runs the digits preset for the three methods and prints its table.
No timing is asserted (speed lives in the benchmark's output, not in tests)."""
import json, subprocess, sys

from conftest import ENV, ROOT, run_module, assert_one_line_error


def test_bench_smoke(tmp_path):
    js = tmp_path / 'bench.json'
    r = run_module('sddit.bench', '--timed-steps', 2, '--warmup', 1, '--runs', 'digits:32', '--json', js, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('| model | method |') and r.stdout.count('| digits |') == 3
    rows = json.loads(js.read_text())['rows']
    assert [x['method'] for x in rows] == ['sddit', 'maskdit', 'dit'] and all(x['batch'] == 32 for x in rows)
    for x in rows:
        assert x['ms'] > 0 and x['tflops'] > 0 and x['gmacs_per_img'] > 0
    sd, md, dit = (x['gmacs_per_img'] for x in rows)
    assert sd > md > 0 and sd > dit                                    # the SD-DiT step does the most arithmetic


def test_bench_bad_input():
    assert_one_line_error(run_module('sddit.bench', '--runs', 'digits:many'),
                          "--runs takes PRESET or PRESET:BATCH, got 'digits:many'", prog='sddit.bench')
    assert_one_line_error(run_module('sddit.bench', '--runs', 'cifar'), "unknown preset 'cifar'")


def test_ablations_are_settings_of_the_step(tmp_path):
    "--ablations times the trainer's step without each optimisation: every variant runs and computes the same loss."
    js = tmp_path / 'abl.json'
    r = run_module('sddit.bench', '--ablations', '--methods', 'sddit', '--timed-steps', 1, '--warmup', 0,
                   '--runs', 'digits:16', '--json', js, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(js.read_text())['rows']
    assert [x['variant'] for x in rows] == ['trainer as is', 'foreach AdamW', 'attention written out', 'plain L_D',
                                            'bf16 autocast']
    as_is = rows[0]['loss']
    for x in rows[1:4]: assert abs(x['loss'] - as_is) < 1e-3 * as_is, x      # the same step, computed another way
    assert abs(rows[4]['loss'] - as_is) < 0.05 * as_is                        # bf16: close
    assert r.stdout.startswith('| variant | model |')


def test_cls_probe_shows_the_identical_cls_start(tmp_path):
    "bench/cls_probe.py runs; under adaLN-Zero every image's [CLS] starts identical (per-image entropy = that of the mean), the pooled start does not."
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'cls_probe.py'), '--steps', '4', '--variants', 'paper', 'pool',
                        'sharp'], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    rows = {l.split('|')[1].strip(): [float(v) for v in l.split('|')[3:8]] for l in r.stdout.splitlines()
            if l.startswith('| ') and l.split('|')[1].strip() in ('paper', 'pool', 'sharp')}
    assert set(rows) == {'paper', 'pool', 'sharp'}
    assert abs(rows['paper'][0] - rows['paper'][1]) < 1e-3            # one [CLS] distribution for every image
    assert rows['pool'][1] - rows['pool'][0] > 5e-3                   # image-dependent: the mean is flatter than each
    assert rows['sharp'][0] < rows['paper'][0] - 1                    # τ_T = 0.01 is in force: a far sharper teacher
