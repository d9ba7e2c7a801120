"""The README's promises that code can check: its usage block runs as written, and its quick start names the test command."""
import re, subprocess, sys
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / 'README.md').read_text()


def test_usage_block_runs_as_written(tmp_path):
    block = README.split('## Use it from Python', 1)[1].split('```python', 1)[1].split('```', 1)[0]
    script = tmp_path / 'usage.py'
    script.write_text(block + "\nassert images.shape == (10, 1, 8, 8) and torch.isfinite(images).all()\n"
                              "assert torch.isfinite(out['L_G']) and torch.isfinite(out['L_D'])\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_quick_start_is_two_commands():
    block = README.split('## Quick start', 1)[1].split('```bash', 1)[1].split('```', 1)[0].strip().splitlines()
    assert len(block) == 2
    assert block[0].startswith('pip install torch==2.14.1 torchvision==0.29.1') and block[0].endswith('python -m sddit.train')
    assert block[1] == 'nbdev_test && pytest'
