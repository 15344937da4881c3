"""The tiny default models shipped in the package: they load without a path, they answer the
held-out task examples, and the fast modes keep (or measurably trade) that accuracy."""

import subprocess
import sys

import pytest

from llamadiff import Generator, default_model, tasks
from llamadiff.eval import accuracy

N = 100            # a fixed held-out subset: 20 examples of each task


@pytest.fixture(scope="module")
def block_gen():
    with Generator(n_ctx=256, n_threads=2) as g:        # no model: the default block model
        yield g


@pytest.fixture(scope="module")
def full_gen():
    with Generator(default_model("full"), n_ctx=256, n_threads=2) as g:
        yield g


def test_default_models_are_what_they_say(block_gen, full_gen):
    assert block_gen.model.family == "block" and block_gen.default_block_length == 4
    assert full_gen.model.family == "full"
    with pytest.raises(ValueError):
        default_model("medium")


def test_held_out_split_is_disjoint():
    train = {p for p, _ in tasks.examples(2000, split="train", seed=0)}
    test = {p for p, _ in tasks.examples(500, split="test", seed=1)}
    assert not train & test


def test_block_model_exact_mode_bar(block_gen):
    r = accuracy(block_gen, N, strategy="low_confidence_static", steps=4)
    assert r["exact_match"] >= 0.95, r


def test_models_answer_as_chat_too(block_gen, full_gen):
    """Through their own chat template the models get the plain prompt: the same answers."""
    for gen, opts in ((block_gen, dict(strategy="low_confidence_static", steps=4)), (full_gen, dict(cache="none"))):
        plain, chat = accuracy(gen, 20, **opts), accuracy(gen, 20, chat=True, **opts)
        assert chat["exact_match"] == plain["exact_match"] and chat["per_task"] == plain["per_task"]


def test_block_model_dynamic_threshold_bar(block_gen):
    exact = accuracy(block_gen, N, strategy="low_confidence_static", steps=4)
    fast = accuracy(block_gen, N, strategy="low_confidence_dynamic", threshold=0.9)
    assert fast["exact_match"] >= exact["exact_match"] - 0.02, (exact, fast)
    assert fast["tokens_per_forward"] >= 1.5, fast


def test_full_model_exact_mode_bar(full_gen):
    r = accuracy(full_gen, N, cache="none")
    assert r["exact_match"] >= 0.90, r


def test_full_model_fast_modes_run(full_gen):
    for opts in (dict(cache="prefix"), dict(cache="dual"), dict(cache="dual", parallel="threshold", threshold=0.9)):
        r = accuracy(full_gen, 20, **opts)
        assert 0.0 <= r["exact_match"] <= 1.0 and r["tokens_per_forward"] >= 1.0


def test_cli_without_a_model_generates_a_checkable_answer():
    proc = subprocess.run([sys.executable, "-m", "llamadiff", "generate", "-p", "sort 93715=", "--visual"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "░" in proc.stdout                       # masks shown resolving
    assert proc.stdout.strip().splitlines()[-1] == "13579"
