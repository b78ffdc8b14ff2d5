"""The README's capture command and its open_capture snippet, run as a user would paste them."""

import re
import shlex
from pathlib import Path

import pytest

from precond_lab.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _capture_command() -> list[str]:
    block = re.search(r"```bash\n(\.venv/bin/precond-lab capture .*?)```", README, re.S).group(1)
    args = shlex.split(block.replace("\\\n", " "))
    assert args[0].endswith("precond-lab")
    return args[1:]


def _snippet() -> str:
    part = README.split("[start:open-capture]")[1].split("[end:open-capture]")[0]
    return re.search(r"```python\n(.*?)```", part, re.S).group(1)


@pytest.mark.slow
def test_readme_capture_then_snippet(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*_capture_command(), "--no-progress"]) == 0
    capsys.readouterr()
    exec(compile(_snippet(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    scores = dict(re.findall(r"'(\w+)': ([-0-9.e+]+|inf|nan)", out)) or None
    assert "cosine" in out, out
    assert "inf" not in out and "nan" not in out, f"the README snippet prints {out}"
    if scores:
        assert 0 < float(scores["cosine"]) <= 1
