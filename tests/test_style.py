"""How the package reads (issue 13): no line of `sddit/` over 120 characters and no statements joined with `;`.
Aside: the generated `_modidx.py`, and the two kinds of line nbdev itself writes into every module — the docstring
made from the notebook's subtitle (line 1) and the `__all__` list (wrapped by nbdev at 120 after its own prefix)."""
import io, tokenize

from conftest import ROOT

FILES = sorted(p for p in (ROOT / 'sddit').glob('*.py') if p.name != '_modidx.py')


def written_lines(p):
    "(number, text) of the lines a person wrote in module `p` (through its notebook)."
    lines, in_all = list(enumerate(p.read_text().splitlines(), 1)), False
    for i, l in lines[1:]:
        if l.startswith('__all__ = ['): in_all = True
        if not in_all: yield i, l
        if in_all and l.rstrip().endswith(']'): in_all = False


def test_lines_are_at_most_120_characters():
    long = [f'{p.name}:{i}' for p in FILES for i, l in written_lines(p) if len(l) > 120]
    assert not long, f'{len(long)} lines over 120 characters (edit the notebook, then nbdev_export): {long[:20]}'


def test_no_statements_joined_with_semicolons():
    joined = [f'{p.name}:{t.start[0]}' for p in FILES
              for t in tokenize.generate_tokens(io.StringIO(p.read_text()).readline)
              if t.type == tokenize.OP and t.string == ';']
    assert not joined, f'{len(joined)} statements joined with ";": {joined[:20]}'
