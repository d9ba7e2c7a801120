"""`python -m sddit.assign`: student copies of the lesson notebooks, and grading them per exercise.

The reference notebooks get full marks; fresh student copies get zero with "not implemented" everywhere; a copy with
one wrong answer loses exactly that exercise; an endless loop or a crash costs only the exercises that hit it."""
import json, os, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from sddit.assign import (BEGIN_HIDDEN, BEGIN_SOLUTION, END_SOLUTION, STUB, fill_answers, find_exercises, grade,
                          main, read_notebook, regions, student_written, written_role)

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
LESSONS = ['01_edm.ipynb', '02_masking.ipynb', '03_dit.ipynb', '04_dino.ipynb', '05_teacher.ipynb', '06_losses.ipynb',
           '07_sampler.ipynb']
EXERCISES = {'01_edm.ipynb': ['edm-noising', 'edm-sigma', 'edm-precond'],
             '02_masking.ipynb': ['mask-gather-restore', 'mask-reinsert'],
             '03_dit.ipynb': ['dit-complete'],
             '04_dino.ipynb': ['dino-head', 'dino-loss'],
             '05_teacher.ipynb': ['teacher-ema'],
             '06_losses.ipynb': ['sddit-step'],
             '07_sampler.ipynb': ['sampler-cfg', 'sampler-heun']}
WRITTEN = {'02_masking.ipynb': ['why-noised-patches'], '05_teacher.ipynb': ['teacher-sigma'],
           '06_losses.ipynb': ['loss-routing']}
# one wrong answer per lesson: (exercise, the reference's line, the wrong line)
PLANTED = {'01_edm.ipynb': ('edm-sigma', '* P_std + P_mean).exp()', '* P_mean + P_std).exp()'),          # swapped parameters
           '02_masking.ipynb': ('mask-reinsert', 'return insert_tokens(x_tok, visible, ids_keep)',
                                'return insert_tokens(torch.zeros_like(x_tok), visible, ids_keep)'),      # a zero "mask token"
           '03_dit.ipynb': ('dit-complete', 'base = x_tok if self.mask_token is None',
                            'base = torch.zeros_like(x_tok) if self.mask_token is None'),               # MAE's zeros
           '04_dino.ipynb': ('dino-loss', 'return ((t_logits.detach().float() - center) / tau_t).softmax(dim=-1)',
                             'return (t_logits.detach().float() / tau_t).softmax(dim=-1)'),             # no centering
           '05_teacher.ipynb': ('teacher-ema', 'torch._foreach_lerp_(dst, src, w)',
                                'torch._foreach_lerp_(dst, src, 0.5)'),                                 # w ignored
           '06_losses.ipynb': ('sddit-step', "d = dino(head, feats['cls'], feats['tokens'],",
                               "d = dino(head, feats['cls'].detach(), feats['tokens'].detach(),"),     # L_D kept off the encoder
           '07_sampler.ipynb': ('sampler-cfg', 'return d_uncond + cfg_scale * (d_cond - d_uncond)',
                                'return d_cond + cfg_scale * (d_cond - d_uncond)')}                         # wrong base
POINTS = {'edm-noising': 1, 'edm-sigma': 1, 'edm-precond': 2, 'mask-gather-restore': 1, 'mask-reinsert': 1,
          'dit-complete': 2, 'dino-head': 1, 'dino-loss': 2, 'teacher-ema': 2, 'sddit-step': 2, 'sampler-cfg': 1,
          'sampler-heun': 2}
TOTAL = sum(POINTS.values())
MANUAL = 6                                                            # three written questions of 2 points
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}


def cli(*args, cwd=ROOT, timeout=900):
    return subprocess.run([sys.executable, '-m', 'sddit.assign', *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


def live_kernels():
    "Kernel processes started by this test process that are still running (Linux /proc; zombies do not count)."
    found = []
    for d in Path('/proc').iterdir():
        try:
            stat = (d / 'stat').read_text(); cmd = (d / 'cmdline').read_bytes()
        except (OSError, ValueError): continue
        fields = stat.rsplit(')', 1)[1].split()
        if b'ipykernel' in cmd and int(fields[1]) == os.getpid() and fields[0] != 'Z': found.append(int(d.name))
    return found


def statuses(entry):
    return {x['id']: x['status'] for x in entry['exercises']}


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp('assignments')
    r = cli('make', '--out', out, *[NBS / n for n in LESSONS])
    assert r.returncode == 0, r.stderr
    return out, r


def test_make_writes_student_copies(made):
    out, r = made
    for name in LESSONS:
        assert f'{out / name}' in r.stdout
        ref, stu = read_notebook(NBS / name), read_notebook(out / name)
        code = [c.source for c in stu.cells if c.cell_type == 'code']
        text = '\n'.join(code)
        # every answer is gone, replaced by one stub per solution region
        n_regions, answer_lines = 0, set()
        for c in ref.cells:
            if c.cell_type == 'code':
                for a, b in regions(c.source, BEGIN_SOLUTION, END_SOLUTION):
                    n_regions += 1
                    answer_lines |= {l for l in c.source.splitlines()[a + 1:b] if l.strip() and not l.strip().startswith('#')}
        assert n_regions >= 1 and text.count(STUB[1]) == n_regions
        assert not answer_lines & set(text.splitlines()), answer_lines & set(text.splitlines())
        assert BEGIN_SOLUTION not in text and BEGIN_HIDDEN not in text and 'END HIDDEN' not in text
        # nothing is exported from the copy, no outputs, the lesson's prose is all there
        assert not any(l.startswith(('#| export', '#| default_exp')) for l in text.splitlines())
        assert all(c.outputs == [] and c.execution_count is None for c in stu.cells if c.cell_type == 'code')
        ref_md = [student_written(c.source) if written_role(c.source)[0] else c.source
                  for c in ref.cells if c.cell_type == 'markdown']
        assert [c.source for c in stu.cells if c.cell_type == 'markdown'][1:] == ref_md
        assert 'BEGIN RUBRIC' not in ''.join(ref_md) and 'BEGIN SOLUTION' not in ''.join(ref_md)
        # visible checks stay, word for word apart from the hidden part
        exs = find_exercises(ref, name)
        assert list(exs) == EXERCISES[name]
        for e in exs.values():
            for i in e.check_cells:
                visible = ref.cells[i].source.split(BEGIN_HIDDEN)[0].strip()
                assert any(s.startswith(visible) for s in code), visible[:80]
        meta = stu.metadata['sddit_assign']
        assert meta['source'] == name and [x['id'] for x in meta['exercises']] == EXERCISES[name]
        assert [x['id'] for x in meta['written']] == WRITTEN.get(name, [])
        nbformat.validate(stu)


def test_reference_notebooks_get_full_marks(tmp_path):
    js = tmp_path / 'report.json'
    r = cli('grade', *[NBS / n for n in LESSONS], '--json', js, '--workers', 2)
    assert r.returncode == 0, r.stderr
    rep = json.loads(js.read_text())
    assert rep['max_score'] == TOTAL and rep['score'] == rep['max_score'], r.stdout
    assert rep['manual_max'] == MANUAL
    for entry, name in zip(rep['notebooks'], LESSONS):
        want = {**{e: 'passed' for e in EXERCISES[name]}, **{w: 'needs manual grading' for w in WRITTEN.get(name, [])}}
        assert statuses(entry) == want, entry
        assert entry['hidden_checks'] and entry['warnings'] == []
        assert entry['flags'] == (['manual-grading'] if name in WRITTEN else []), entry['flags']
    assert f'total: {TOTAL}/{TOTAL} points (100 %)' in r.stdout


def test_fresh_copies_score_zero_with_not_implemented(made, tmp_path):
    out, _ = made
    js = tmp_path / 'report.json'
    r = cli('grade', out, '--json', js, '--workers', 2, '--out', tmp_path / 'grades')   # a folder of notebooks
    assert r.returncode == 0, r.stderr
    rep = json.loads(js.read_text())
    assert rep['score'] == 0 and rep['max_score'] == TOTAL
    for entry in rep['notebooks']:
        for x in entry['exercises']:
            if x['kind'] == 'written':
                assert x['status'] == 'not answered' and x['answer'] == '' and 'pt' in x['rubric'], x
                continue
            assert x['status'] == 'not implemented' and x['message'].startswith('not implemented: '), x
            assert 'raises NotImplementedError' in x['message']
        assert entry['warnings'] == [] and entry['flags'] == []
    assert r.stdout.count('not implemented  0/') == len(POINTS)
    assert [p.name for p in (tmp_path / 'grades' / 'feedback').iterdir()] == [f'{out.name}.md']   # one student: the folder
    assert len((tmp_path / 'grades' / 'gradebook.csv').read_text().splitlines()) == 1 + len(LESSONS)


def plant(made, tmp_path, name, exercise, right, wrong):
    "A student copy of `name` with every answer right except one line."
    out, _ = made
    answered = fill_answers(read_notebook(out / name), read_notebook(NBS / name))
    hits = 0
    for c in answered.cells:
        if c.cell_type == 'code' and f'#| exercise {exercise}' in c.source and right in c.source:
            c.source = c.source.replace(right, wrong); hits += 1
    assert hits == 1, (name, right)
    path = tmp_path / f'planted_{name}'
    nbformat.write(answered, path)
    return path


def test_one_planted_wrong_answer_fails_exactly_that_exercise(made, tmp_path):
    paths = [plant(made, tmp_path, n, *PLANTED[n]) for n in LESSONS]
    js = tmp_path / 'report.json'
    r = cli('grade', *paths, '--json', js, '--workers', 2)
    print(r.stdout)                                                 # the grade report, for the record (pytest -s)
    assert r.returncode == 0, r.stderr
    rep = json.loads(js.read_text())
    for entry, name in zip(rep['notebooks'], LESSONS):
        wrong = PLANTED[name][0]
        got = {k: v for k, v in statuses(entry).items() if k in POINTS}
        assert got == {e: ('failed' if e == wrong else 'passed') for e in EXERCISES[name]}, entry
        msg = next(x['message'] for x in entry['exercises'] if x['id'] == wrong)
        assert msg and (not msg.startswith('at `') or '`: ' in msg)  # the line that failed (when it can be shown) and the message
    assert rep['score'] == TOTAL - sum(POINTS[PLANTED[n][0]] for n in LESSONS)


def test_endless_loop_and_crash_cost_only_their_exercises(made, tmp_path):
    out, _ = made
    nb = fill_answers(read_notebook(out / '01_edm.ipynb'), read_notebook(NBS / '01_edm.ipynb'))
    for c in nb.cells:
        if '#| exercise edm-sigma' in c.source:
            c.source = c.source.replace('    return (torch.randn(n,', '    while True: pass\n    return (torch.randn(n,')
        if '#| exercise edm-precond' in c.source and 'class EDMPrecond' in c.source:
            c.source = c.source.replace('        out = self.net(', '        import os; os._exit(1)\n        out = self.net(')
    nbformat.write(nb, tmp_path / '01_edm.ipynb')
    rep = grade([tmp_path / '01_edm.ipynb'], timeout=15)
    e = rep['notebooks'][0]
    assert statuses(e) == {'edm-noising': 'passed', 'edm-sigma': 'timed out', 'edm-precond': 'error'}, e
    assert 'no result within 15 s' in e['exercises'][1]['message'] and 'kernel died' in e['exercises'][2]['message']
    assert e['score'] == 1
    assert live_kernels() == []                   # the looping kernel is gone, not left spinning (nor any other kernel)


def toy(tmp_path):
    "A tiny lesson (no torch: fast) with two exercises, in tmp_path/ref."
    cells = [nbformat.v4.new_code_cell('#| default_exp toy'),
             nbformat.v4.new_code_cell('#| export\n#| exercise double\ndef double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION'),
             nbformat.v4.new_code_cell('#| check double\nassert double(3) == 6\n### BEGIN HIDDEN TESTS\nassert double(-1) == -2, "double(-1)"\n### END HIDDEN TESTS'),
             nbformat.v4.new_code_cell('#| exercise halve\ndef halve(x):\n    ### BEGIN SOLUTION\n    return x / 2\n    ### END SOLUTION'),
             nbformat.v4.new_code_cell('#| check halve\nassert halve(3) == 1.5')]
    nb = nbformat.v4.new_notebook(cells=cells)
    (tmp_path / 'ref').mkdir()
    nbformat.write(nb, tmp_path / 'ref' / 'toy.ipynb')
    r = cli('make', '--out', tmp_path / 'out', tmp_path / 'ref' / 'toy.ipynb')
    assert r.returncode == 0, r.stderr
    return nb, read_notebook(tmp_path / 'out' / 'toy.ipynb')


def test_edited_checks_do_not_change_the_grade(tmp_path):
    ref, stu = toy(tmp_path)
    nb = fill_answers(stu, ref)
    for c in nb.cells:
        c.source = c.source.replace('return 2 * x', 'return 2 * abs(x)')          # passes the visible check only
        if c.source.startswith('#| check double'): c.source = '#| check double\npass'   # ...and the check is gutted
        if c.source.startswith('#| check halve'): c.source = 'print("deleted")'        # a check cell removed
    nbformat.write(nb, tmp_path / 'student.ipynb')
    e = grade([tmp_path / 'student.ipynb'], source=tmp_path / 'ref', timeout=30)['notebooks'][0]
    assert statuses(e) == {'double': 'failed', 'halve': 'error'}, e
    assert 'assert double(-1) == -2' in e['exercises'][0]['message']            # the hidden check ran
    assert 'missing from the notebook' in e['exercises'][1]['message']
    # without the reference, the notebook's own (visible) checks run, and the report says so
    nbformat.write(fill_answers(stu, ref), tmp_path / 'alone.ipynb')
    e = grade([tmp_path / 'alone.ipynb'], source=tmp_path, timeout=30)['notebooks'][0]
    assert statuses(e) == {'double': 'passed', 'halve': 'passed'} and not e['hidden_checks']
    assert 'hidden checks did not run' in e['warnings'][0]


def test_a_notebook_that_imports_our_answers_is_flagged(tmp_path):
    ref, stu = toy(tmp_path)
    nb = fill_answers(stu, ref)
    nb.cells.append(nbformat.v4.new_code_cell('import sys, types; sys.modules["sddit.toy"] = types.ModuleType("sddit.toy")'))
    nbformat.write(nb, tmp_path / 'student.ipynb')
    e = grade([tmp_path / 'student.ipynb'], source=tmp_path / 'ref', timeout=30)['notebooks'][0]
    assert any('loaded sddit.toy' in w for w in e['warnings']) and 'solution-import' in e['flags'], e
    # a plain import of the lesson's module is flagged without running it, and cannot load our answers
    nb = fill_answers(stu, ref)
    nb.cells.insert(2, nbformat.v4.new_code_cell('from sddit.toy import double'))
    nbformat.write(nb, tmp_path / 'student.ipynb')
    e = grade([tmp_path / 'student.ipynb'], source=tmp_path / 'ref', timeout=30)['notebooks'][0]
    assert e['flags'] == ['solution-import'] and 'from sddit.toy import double' in e['warnings'][0], e


@pytest.mark.parametrize('args, message', [
    (['grade', 'nope.ipynb'], 'no notebook at nope.ipynb'),
    (['grade', 'nbs/01_edm.ipynb', '--timeout', '0'], '--timeout must be a positive number of seconds, got 0'),
    (['grade', 'nbs/01_edm.ipynb', '--source', 'nowhere'], '--source nowhere is not a folder'),
    (['make', 'nbs/00_data.ipynb', '--out', '{tmp}'], '00_data.ipynb has no exercises'),
    (['grade', 'nbs/00_data.ipynb'], '00_data.ipynb has no exercises and answers no lesson that has'),
    (['grade', '{tmp}/file.txt'], 'file.txt is not a Jupyter notebook (it is not JSON): save it from Jupyter'),
    (['grade', 'nbs/01_edm.ipynb', '--workers', '0'], '--workers must be at least 1, got 0'),
    (['grade', 'nbs/01_edm.ipynb', '--memory', '-1'], '--memory must be a number of GiB'),
    (['grade', 'nbs/01_edm.ipynb', '--notebook-timeout', '0'], '--notebook-timeout must be a positive number'),
    (['make', 'nbs/01_edm.ipynb', '--out', '{tmp}/file.txt'], 'is a file: give a folder'),
    (['make', 'nbs/01_edm.ipynb', '--out', 'nbs'], 'the copy would overwrite the lesson'),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(ROOT)
    (tmp_path / 'file.txt').write_text('keep')
    with pytest.raises(SystemExit) as e: main([a.replace('{tmp}', str(tmp_path)) for a in args])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert (tmp_path / 'file.txt').read_text() == 'keep' and len(list(tmp_path.iterdir())) == 1


def test_bad_markers_are_named_with_cell_and_fix(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('#| exercise f\ndef f():\n    ### BEGIN SOLUTION\n    return 1')])
    nbformat.write(nb, tmp_path / 'broken.ipynb')
    r = cli('make', tmp_path / 'broken.ipynb', '--out', tmp_path / 'out')
    assert r.returncode == 2 and "broken.ipynb, cell 0: '### BEGIN SOLUTION' on line 3 has no '### END SOLUTION'" in r.stderr
    assert not (tmp_path / 'out').exists()


def test_an_alternative_correct_answer_gets_full_marks(made, tmp_path):
    "dino-head's checks test behaviour (unit prototypes, cosine logits, g fixed), not one PyTorch API."
    out, _ = made
    nb = fill_answers(read_notebook(out / '04_dino.ipynb'), read_notebook(NBS / '04_dino.ipynb'))
    cell = next(c for c in nb.cells if '#| exercise dino-head' in c.source)
    a = cell.source.index('        last = nn.Linear(')
    b = cell.source.index('\n', cell.source.index('g.requires_grad_(False)')) + 1
    cell.source = cell.source[:a] + (
        '        class UnitRows(nn.Module):                     # w = v / ‖v‖: unit rows, nothing to fix\n'
        '            def forward(self, v): return F.normalize(v, dim=1)\n'
        '        last = nn.Linear(bottleneck_dim, out_dim, bias=False)\n'
        '        nn.init.trunc_normal_(last.weight, std=0.02)\n'
        "        self.last_layer = nn.utils.parametrize.register_parametrization(last, 'weight', UnitRows())\n") + cell.source[b:]
    assert 'parametrizations' not in cell.source[:cell.source.index('@property')]
    nbformat.write(nb, tmp_path / 'ada_04_dino.ipynb')
    e = grade([tmp_path / 'ada_04_dino.ipynb'], timeout=120)['notebooks'][0]
    assert statuses(e) == {'dino-head': 'passed', 'dino-loss': 'passed'} and e['score'] == e['max_score'] == 3, e
    assert e['student'] == 'ada' and e['flags'] == [], e


@pytest.mark.parametrize('content, message', [
    ('{}', 'x_01_edm.ipynb is not a Jupyter notebook (it has no list of cells)'),
    ('answers: 1) sigma 2) c_in', 'x_01_edm.ipynb is not a Jupyter notebook (it is not JSON)'),
    (nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 1')])),
     'x.ipynb has no exercises and answers no lesson that has'),
])
def test_a_file_that_is_no_submission_is_one_line_and_exit_2(tmp_path, content, message):
    name = 'x.ipynb' if 'no exercises' in message else 'x_01_edm.ipynb'
    (tmp_path / name).write_text(content)
    r = cli('grade', tmp_path / name, '--out', tmp_path / 'grades')
    assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('sddit.assign: error: ') and message in lines[0], lines
    assert not (tmp_path / 'grades').exists()                       # nothing graded, nothing written
