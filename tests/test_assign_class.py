"""A class of 40 graded at once: `python -m sddit.assign grade FOLDER --workers 2` → a CSV gradebook, 40 feedback files.

The 40 submissions of `02_masking` are made from the lesson itself: the student copy with the reference answers
filled in, then changed the way students change it — right answers written differently, wrong answers, crashes,
endless loops, redefined test helpers and exception hooks, gutted or deleted checks, imports of our solutions, work
not started, a file that is no notebook — under three file-name conventions. Each has its expected points per
exercise and its flags. `make_class(folder)` writes them (also used to time the class by hand, see the report)."""
import copy, csv, json, os, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from sddit.assign import fill_answers, read_notebook, student_copy

ROOT = Path(__file__).resolve().parents[1]
LESSON = '02_masking.ipynb'
GR, RE, Q = 'mask-gather-restore', 'mask-reinsert', 'why-noised-patches'
CELL = dict(mask='41b15f39', gather='8373bd6a', insert='9615f356', complete='aacf2385', imports='db8c7b51',
            check_mask='8024e50e', check_gather='9d35de1c', check_insert='24255cb7', check_complete='05447723',
            demo='617b38ce', answer='e15a0c09')
OK, ANSWERED = {GR: 1, RE: 1}, {Q: 'needs manual grading'}

# edits: ('sub', cell, old, new) | ('after', cell, new code cell) | ('set', cell, new source) | ('drop', cell)
# | ('stub',): the fresh copy | ('bytes', text): not a notebook.  want: {exercise: points or status}, flags
LOOP = 'while True: pass\n'
CLASS = [
    # right, some written differently
    ('alice', 'suffix', [], {**OK, **ANSWERED}, {'manual-grading'}),
    ('bob', 'folder', [], {**OK, **ANSWERED}, {'manual-grading'}),
    ('chen', 'plain', [], {**OK, **ANSWERED}, {'manual-grading'}),
    ('dana', 'suffix', [('sub', 'gather', 'return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))',
                         'return torch.take_along_dim(x, ids[..., None], dim=1)')], {**OK, **ANSWERED}, {'manual-grading'}),
    ('emil', 'suffix', [('sub', 'insert', 'return base.scatter(1, ids[..., None].expand(-1, -1, base.shape[-1]), tokens)',
                         'out = base.clone()\n    out[torch.arange(base.shape[0])[:, None], ids] = tokens\n    return out')],
     {**OK, **ANSWERED}, {'manual-grading'}),
    ('fatima', 'folder', [('set', 'answer', '<!-- #| written why-noised-patches 2 -->\nThe mask token is never seen '
                                            'when sampling, the noised patches are.')], {**OK, **ANSWERED}, {'manual-grading'}),
    ('gus', 'suffix', [('set', 'answer', '<!-- #| written why-noised-patches 2 -->\nYOUR ANSWER HERE')],
     {**OK, Q: 'not answered'}, set()),
    ('hana', 'suffix', [('sub', 'demo', 'x0 = ds.x_train[:6]', 'x0 = ds.x_train[:6]\nraise RuntimeError("a demo broke")')],
     {**OK, **ANSWERED}, {'manual-grading'}),                      # an error outside the exercises costs nothing
    ('ivan', 'plain', [], {**OK, **ANSWERED}, {'manual-grading'}),
    ('jade', 'suffix', [], {**OK, **ANSWERED}, {'manual-grading'}),
    # wrong answers
    ('kofi', 'suffix', [('sub', 'mask', 'ids_restore = ids_shuffle.argsort(dim=1)', 'ids_restore = ids_shuffle')],
     {GR: 'failed', RE: 1, **ANSWERED}, {'manual-grading'}),
    ('lena', 'suffix', [('sub', 'mask', 'torch.rand(N, L, generator=generator, device=device)', 'torch.rand(N, L, device=device)')],
     {GR: 'failed', RE: 1, **ANSWERED}, {'manual-grading'}),        # caught by the hidden checks only
    ('mo', 'folder', [('sub', 'complete', 'return insert_tokens(x_tok, visible, ids_keep)',
                       'return insert_tokens(torch.zeros_like(x_tok), visible, ids_keep)')],
     {GR: 1, RE: 'failed', **ANSWERED}, {'manual-grading'}),
    ('nia', 'suffix', [('sub', 'insert', 'return base.scatter(1,', 'return base.scatter_(1,')],
     {GR: 1, RE: 'error', **ANSWERED}, {'manual-grading'}),
    ('omar', 'suffix', [('sub', 'gather', 'return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))', 'return x[:, ids[0]]'),
                        ('sub', 'complete', 'return insert_tokens(x_tok, visible, ids_keep)',
                         'return insert_tokens(x_tok, gather_tokens(x_tok, ids_keep), ids_keep)')],
     {GR: 'failed', RE: 'failed', **ANSWERED}, {'manual-grading'}),
    ('pia', 'plain', [('sub', 'mask', 'mask.gather(1, ids_restore))', 'mask)')], {GR: 'failed', RE: 1, **ANSWERED},
     {'manual-grading'}),
    ('quinn', 'suffix', [('sub', 'insert', 'return base.scatter(1, ids[..., None].expand(-1, -1, base.shape[-1]), tokens)',
                          'return tokens')], {GR: 1, RE: 'error', **ANSWERED}, {'manual-grading'}),
    ('rosa', 'suffix', [('stub',), ('sub', 'gather', 'raise NotImplementedError()', 'return x')],
     {GR: 'not implemented', RE: 'not implemented', Q: 'not answered'}, set()),
    # crashes
    ('sam', 'suffix', [('sub', 'mask', 'noise = torch.rand(', 'import os\n    os._exit(1)\n    noise = torch.rand(')],
     {GR: 'error', RE: 1, **ANSWERED}, {'manual-grading', 'kernel-died'}),
    ('tara', 'folder', [('sub', 'insert', 'return base.scatter(', 'raise ValueError("oops")\n    return base.scatter(')],
     {GR: 1, RE: 'error', **ANSWERED}, {'manual-grading'}),
    ('uma', 'suffix', [('sub', 'gather', 'return x.gather(', 'return x.gather((')], {GR: 'error', RE: 1, **ANSWERED},
     {'manual-grading'}),                                          # a syntax error
    ('vic', 'suffix', [('sub', 'complete', 'return insert_tokens(', 'big = torch.empty(3 * 2 ** 30)\n    return insert_tokens(')],
     {GR: 1, RE: 'error', **ANSWERED}, {'manual-grading'}),        # 12 GiB: over the kernel's 8 GiB address space
    ('wen', 'suffix', [('after', 'imports', 'import os\nos._exit(0)')], {**OK, **ANSWERED},
     {'manual-grading', 'kernel-died'}),                           # a crash outside the exercises: replayed around
    # endless loops
    ('xia', 'suffix', [('sub', 'gather', 'return x.gather(', LOOP + '    return x.gather(')],
     {GR: 'timed out', RE: 1, **ANSWERED}, {'manual-grading', 'timed-out'}),
    ('yosef', 'folder', [('sub', 'complete', 'return insert_tokens(', LOOP + '    return insert_tokens(')],
     {GR: 1, RE: 'timed out', **ANSWERED}, {'manual-grading', 'timed-out'}),
    ('zoe', 'suffix', [('after', 'imports', LOOP)], {**OK, **ANSWERED}, {'manual-grading', 'timed-out'}),
    # redefined helpers, tampering, edited checks — with wrong answers, which must still fail
    ('abe', 'suffix', [('after', 'imports', 'test_eq = test_close = test_fail = lambda *a, **k: None'),
                       ('sub', 'mask', 'ids_restore = ids_shuffle.argsort(dim=1)', 'ids_restore = ids_shuffle'),
                       ('sub', 'complete', 'return insert_tokens(x_tok, visible, ids_keep)', 'return x_tok')],
     {GR: 'failed', RE: 'failed', **ANSWERED}, {'manual-grading'}),
    ('bea', 'suffix', [('after', 'imports', 'import fastcore.test\nfastcore.test.test_eq = lambda *a, **k: None\n'
                                            'from fastcore.test import test_eq'),
                       ('sub', 'gather', 'return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))', 'return x[:, ids[0]]')],
     {GR: 'failed', RE: 1, **ANSWERED}, {'manual-grading'}),
    ('cal', 'plain', [('after', 'imports', 'get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)'),
                      ('sub', 'complete', 'return insert_tokens(x_tok, visible, ids_keep)', 'return x_tok')],
     {GR: 1, RE: 'error', **ANSWERED}, {'manual-grading', 'kernel-tampering', 'check-incomplete'}),
    ('dev', 'suffix', [('set', 'check_complete', '#| check mask-reinsert\npass'),
                       ('sub', 'complete', 'return insert_tokens(x_tok, visible, ids_keep)', 'return x_tok')],
     {GR: 1, RE: 'failed', **ANSWERED}, {'manual-grading'}),       # a gutted check: the reference's runs
    ('eli', 'suffix', [('drop', 'check_gather')], {GR: 'error', RE: 1, **ANSWERED}, {'manual-grading', 'check-missing'}),
    # our solutions imported
    ('fay', 'suffix', [('set', 'mask', 'from sddit.masking import Mask, num_visible, random_mask')],
     {GR: 'error', RE: 1, **ANSWERED}, {'manual-grading', 'solution-import'}),
    ('gil', 'folder', [('set', 'insert', 'import sddit.masking as M\ninsert_tokens = M.insert_tokens')],
     {GR: 1, RE: 'error', **ANSWERED}, {'manual-grading', 'solution-import'}),
    ('hal', 'suffix', [('set', 'gather', 'import importlib\ngather_tokens = importlib.import_module("sddit.masking").gather_tokens')],
     {GR: 'error', RE: 1, **ANSWERED}, {'manual-grading', 'solution-import'}),
    ('ida', 'suffix', [('set', 'gather', 'import sys\ndel sys.modules["sddit.masking"]\nfrom sddit.masking import gather_tokens')],
     {**OK, **ANSWERED}, {'manual-grading', 'solution-import'}),   # gets past the block: full marks, but flagged
    # not started, and not a notebook
    ('jon', 'suffix', [('stub',)], {GR: 'not implemented', RE: 'not implemented', Q: 'not answered'}, set()),
    ('kim', 'folder', [('stub',)], {GR: 'not implemented', RE: 'not implemented', Q: 'not answered'}, set()),
    ('lou', 'plain', [('stub',)], {GR: 'not implemented', RE: 'not implemented', Q: 'not answered'}, set()),
    ('max', 'suffix', [('bytes', '{}')], {GR: 'error', RE: 'error', Q: 'error'}, {'unreadable'}),
    ('ned', 'suffix', [('bytes', 'my answers are in the email')], {GR: 'error', RE: 'error', Q: 'error'}, {'unreadable'}),
]


def path_for(folder, student, style):
    return {'suffix': folder / f'{student}_02_masking.ipynb', 'folder': folder / student / '02_masking.ipynb',
            'plain': folder / f'{student}.ipynb'}[style]


def make_class(folder) -> dict:
    "Write the 40 submissions into `folder`; returns {student: (file, want, flags)}."
    folder = Path(folder)
    ref = read_notebook(ROOT / 'nbs' / LESSON)
    fresh = student_copy(ref, LESSON)
    out = {}
    for student, style, edits, want, flags in CLASS:
        nb = fill_answers(fresh, ref)
        path = path_for(folder, student, style)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = None
        for edit in edits:
            cells = {c.get('id'): c for c in nb.cells}
            if edit[0] == 'stub': nb = copy.deepcopy(fresh)
            elif edit[0] == 'bytes': text = edit[1]
            elif edit[0] == 'sub':
                c = cells[CELL[edit[1]]]
                assert c.source.count(edit[2]) == 1, (student, edit)
                c.source = c.source.replace(edit[2], edit[3])
            elif edit[0] == 'set': cells[CELL[edit[1]]].source = edit[2]
            elif edit[0] == 'drop': nb.cells = [c for c in nb.cells if c.get('id') != CELL[edit[1]]]
            elif edit[0] == 'after':
                k = next(i for i, c in enumerate(nb.cells) if c.get('id') == CELL[edit[1]])
                nb.cells.insert(k + 1, nbformat.v4.new_code_cell(edit[2]))
        if text is None: nbformat.write(nb, path)
        else: path.write_text(text)
        out[student] = (path, want, flags)
    assert len(out) == 40
    return out


@pytest.fixture(scope='module')
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('class')
    expected = make_class(tmp / 'submissions')
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}
    r = subprocess.run([sys.executable, '-m', 'sddit.assign', 'grade', tmp / 'submissions', '--workers', '2',
                        '--timeout', '20', '--out', tmp / 'grades', '--json', tmp / 'grades' / 'report.json'],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, expected, r


def test_every_student_gets_the_expected_points_and_flags(graded):
    tmp, expected, r = graded
    rep = json.loads((tmp / 'grades' / 'report.json').read_text())
    assert len(rep['notebooks']) == 40 and rep['workers'] == 2
    seen = {}
    for e in rep['notebooks']:
        path, want, flags = expected[e['student']]
        assert Path(e['notebook']) == path and e['lesson'] == '02_masking', e
        got = {x['id']: x['points'] if x['status'] == 'passed' and x['kind'] == 'code' else x['status']
               for x in e['exercises']}
        assert got == want, (e['student'], got, e['exercises'])
        assert set(e['flags']) == flags, (e['student'], e['flags'], e['warnings'])
        assert e['max_score'] == 2 and e['manual_max'] == 2
        seen[e['student']] = e
    assert set(seen) == set(expected)
    assert 'from sddit.masking import Mask, num_visible, random_mask' in ' '.join(seen['fay']['warnings'])
    assert any('loaded sddit.masking' in w for w in seen['ida']['warnings'])
    assert 'no result within 20 s' in next(x['message'] for x in seen['xia']['exercises'] if x['id'] == GR)
    assert "can't allocate memory" in next(x['message'] for x in seen['vic']['exercises'] if x['id'] == RE)
    assert 'stopped before its end' in next(x['message'] for x in seen['cal']['exercises'] if x['id'] == RE)
    assert rep['score'] == sum(p for _, want, _ in expected.values() for p in want.values() if isinstance(p, int))
    n = sum(want[Q] == 'needs manual grading' for _, want, _ in expected.values())
    total = next(l for l in r.stdout.splitlines() if l.startswith('total: '))
    assert total == f"total: {rep['score']}/80 points ({100 * rep['score'] / 80:.0f} %); {n} written answers to grade by " \
                    f"hand ({2 * n} points)", total


def test_the_gradebook_has_a_row_per_student_and_a_column_per_exercise(graded):
    tmp, expected, r = graded
    rows = list(csv.DictReader((tmp / 'grades' / 'gradebook.csv').open()))
    assert [row['student'] for row in rows] == sorted(expected)
    assert list(rows[0]) == ['student', 'lesson', 'notebook', 'score', 'max_score', 'manual_max', GR, RE, Q, 'flags']
    for row in rows:
        path, want, flags = expected[row['student']]
        assert int(row['score']) == sum(p for p in want.values() if isinstance(p, int)), row
        assert row[Q] == ('needs manual grading' if want[Q] == 'needs manual grading' else '0'), row
        assert set(row['flags'].split()) == flags, row
    assert f"gradebook: {tmp / 'grades' / 'gradebook.csv'}" in r.stdout


def test_one_feedback_file_per_student(graded):
    tmp, expected, r = graded
    files = sorted((tmp / 'grades' / 'feedback').iterdir())
    assert [f.stem for f in files] == sorted(expected) and len(files) == 40
    kofi = (tmp / 'grades' / 'feedback' / 'kofi.md').read_text()
    assert kofi.startswith('# Feedback for kofi\n\n1/2 points from the automatic checks; up to 2 more from written '
                           'answers, graded by hand.')
    assert f'**{GR}** — failed, 0/1 points. at `' in kofi and f'**{RE}** — passed, 1/1 points' in kofi
    assert '### Written answers (to grade by hand)' in kofi and 'Rubric:' in kofi and 'training–inference' in kofi
    fay = (tmp / 'grades' / 'feedback' / 'fay.md').read_text()
    assert "- solution-import: imports the lesson's reference answers" in fay
    assert 'not a Jupyter notebook' in (tmp / 'grades' / 'feedback' / 'max.md').read_text()
