"""The example scripts run as written; a downstream Cython extension plugs into Generator."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow     # the quick subset leaves it out (README: -m "not slow")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script, cwd, *args, timeout=300):
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_quickstart(tmp_path):
    out = run(EXAMPLES / "quickstart.py", tmp_path)
    assert "family: block" in out and "block length: 4" in out
    assert "'47+38=' -> '85'" in out           # the default model's answers are checkable
    assert "  block " in out
    assert "(1 tokens" not in out and "  block 4: [] ''" not in out
    assert all("[]" not in line for line in out.splitlines() if line.startswith("  block "))


def test_streaming(tmp_path):
    out = run(EXAMPLES / "streaming.py", tmp_path)
    # the shipped model's answer, one block at a time: 'rev python=' -> 'nohtyp'
    chunks = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[block ")]
    assert "".join(eval(c) for c in chunks) == "nohtyp" and "stop: stop" in out


def test_chat(tmp_path):
    out = run(EXAMPLES / "chat.py", tmp_path)
    # the shipped model answers each turn's task; its template shows it only that turn
    answers = [l.split("> ", 1)[1].split("  [")[0] for l in out.splitlines() if l.startswith("model>")]
    assert answers == ["85", "13579", "nohtyp"]
    assert "the prompt of the first turn: '47+38='" in out


def test_downstream_cython_policy(tmp_path):
    """Build examples/custom_remasking in a temporary directory against the installed llamadiff
    (setuptools + cythonize, public .pxd files), plug the policy into Generator, and check
    that the block loop followed it: right to left, one position per step."""
    pytest.importorskip("Cython")
    work = tmp_path / "custom_remasking"
    shutil.copytree(EXAMPLES / "custom_remasking", work)
    out = run(work / "run.py", work, timeout=600)
    order_line = next(l for l in out.splitlines() if l.startswith("commit order"))
    order = eval(order_line.split(":", 1)[1])          # [[pos], [pos], ...]
    positions = [p[0] for p in order]
    # prompt "hello" is one token: block 0 holds positions 1..3, then blocks of 4
    assert positions == [3, 2, 1, 7, 6, 5, 4, 11, 10, 9, 8]
    # the editing policy: every step fills one mask (right to left) and may overwrite one placed
    # token; the final tokens are the last ones written, and a block ends at most two steps
    # after its last mask, or at the first step that changes nothing
    steps = eval(next(l for l in out.splitlines() if l.startswith("revise_one steps")).split(":", 1)[1])
    edits_line = next(l for l in out.splitlines() if l.startswith("revise_one edits"))
    edits, tokens = int(edits_line.split()[2]), eval(edits_line.split("tokens:", 1)[1])
    written, n_edits = {}, 0
    for step in steps:
        assert len(step) <= 2
        for p, t in step:
            n_edits += p in written
            written[p] = t
    assert n_edits == edits > 0, steps
    assert [written[p] for p in range(1, 9)] == tokens
    # the same policy on LLaDA: the prompt's tokens, then 8 positions right to left
    full_line = next(l for l in out.splitlines() if l.startswith("full diffusion commit order"))
    full = [p[0] for p in eval(full_line.split(":", 1)[1])]
    assert full == list(range(full[0], full[0] - 8, -1)) and full[-1] >= 1
    sys.path.insert(0, str(work))
    try:
        import right_to_left
        from llamadiff import Generator, RemaskPolicy, testing
        assert isinstance(right_to_left.RightToLeft(), RemaskPolicy)
        path = testing.write_qwen3(tmp_path / "m.gguf")
        with Generator(path, n_ctx=256) as gen:
            ours = gen.generate([5, 6, 7, 8], max_new_tokens=8, strategy=right_to_left.RightToLeft(),
                                stop=[])
            assert len(ours.tokens) == 8
            gen.generate([5], max_new_tokens=4, stop=[])
            assert right_to_left.kv_cells(gen.contexts.single) == gen.contexts.single.n_ctx
    finally:
        sys.path.remove(str(work))
