"""`python -m sddit.course`: `check` on fixture notebooks with stored outputs (no kernel), `execute` then `check` on a
fixture lesson in a fresh kernel, and the README's pictures are the ones `figures` makes."""
import json, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / 'tests' / 'fixtures' / 'course'


def course(*args, cwd=ROOT):
    return subprocess.run([sys.executable, '-m', 'sddit.course', *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_check_passes_on_fresh_outputs_with_a_figure():
    r = course('check', FIX / 'with_figure.ipynb', '--manifest', FIX / '_outputs.json')
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'up to date' in r.stdout


def test_check_prints_one_line_per_problem_and_exits_1():
    nbs = [FIX / f'{n}.ipynb' for n in ('with_figure', 'no_figure', 'with_error', 'stale')]
    r = course('check', *nbs, '--manifest', FIX / '_outputs.json')
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith('no_figure.ipynb: no stored figure (no image/png output)')
    assert lines[1].startswith('with_error.ipynb cell 2: error output ZeroDivisionError: division by zero')
    assert lines[2].startswith('stale.ipynb: outputs older than the code (code changed in cell 2)')


def test_a_notebook_missing_from_the_manifest_is_reported(tmp_path):
    shutil.copy(FIX / 'with_figure.ipynb', tmp_path / 'lesson.ipynb')
    r = course('check', tmp_path / 'lesson.ipynb', '--manifest', tmp_path / '_outputs.json')
    assert r.returncode == 1
    assert r.stdout.startswith('lesson.ipynb: no stored outputs (not in _outputs.json)')


def test_execute_stores_outputs_that_check_accepts_until_the_code_changes(tmp_path):
    nb_path, manifest = tmp_path / 'tiny.ipynb', tmp_path / '_outputs.json'
    shutil.copy(FIX / 'tiny.ipynb', nb_path)
    r = course('execute', nb_path, '--manifest', manifest)
    assert r.returncode == 0, r.stdout + r.stderr
    nb = json.loads(nb_path.read_text())
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    assert any('image/png' in o.get('data', {}) for o in code[0]['outputs'])           # the figure is stored
    assert code[1]['outputs'] == []                                                   # the #| slow cell did not run
    assert code[2]['outputs'][0]['data']['text/plain'] in ('2', ['2'])
    assert all(c['execution_count'] is None and c['metadata'] == {} for c in code)   # cleaned as nbdev_clean does
    entry = json.loads(manifest.read_text())['notebooks']['tiny.ipynb']
    assert len(entry['code_cells']) == 3 and entry['seconds'] > 0
    assert course('check', nb_path, '--manifest', manifest).returncode == 0
    code[2]['source'] = ['x = 1 + 2\n', 'x']
    nb_path.write_text(json.dumps(nb, indent=1))
    r = course('check', nb_path, '--manifest', manifest)
    assert r.returncode == 1 and 'outputs older than the code (code changed in cell 3)' in r.stdout


def test_the_readme_embeds_the_pictures_that_figures_makes(tmp_path):
    from sddit.course import FIGURES
    readme = (ROOT / 'README.md').read_text()
    embedded = set(re.findall(r'!\[[^\]]*\]\(nbs/images/([\w.-]+\.png)\)', readme))
    assert embedded and embedded <= set(FIGURES)
    for name in embedded: assert (ROOT / 'nbs' / 'images' / name).is_file(), name
    r = course('figures', '--out', tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FIGURES)
