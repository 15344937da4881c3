"""Shared fixtures: tiny random-weight GGUF models written once per test session."""

import os
import sys

import pytest

from llamadiff import Model, testing

sys.path.insert(0, os.path.dirname(__file__))  # tests/numpy_reference.py


# ------------------------------------------------------------------ skips are counted
# On a CPU-only machine only tests marked `cuda` or `vulkan` may skip: every other skip means something a
# user needs (an extra, the RPC server, a compiler) was missing. The summary always says how
# many skipped and why; LLAMADIFF_STRICT_SKIPS=1 (set by .ci/run) makes any other skip fail
# the run.

_SKIPS = {"cuda": [], "other": []}


def _record_skip(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        keywords = getattr(report, "keywords", ())
        kind = "cuda" if ("cuda" in keywords or "vulkan" in keywords) else "other"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPS[kind].append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)          # a module-level importorskip


def _strict():
    return os.environ.get("LLAMADIFF_STRICT_SKIPS", "") not in ("", "0")


def pytest_terminal_summary(terminalreporter):
    cuda_n, other = len(_SKIPS["cuda"]), _SKIPS["other"]
    terminalreporter.write_line(f"llamadiff skips: {cuda_n + len(other)} skipped "
                                f"({cuda_n} need CUDA or Vulkan, {len(other)} other)")
    for line in other:
        terminalreporter.write_line(f"  not a CUDA skip: {line}")
    if other and _strict():
        terminalreporter.write_line("LLAMADIFF_STRICT_SKIPS=1: only CUDA tests may skip; failing the run")


def pytest_sessionfinish(session, exitstatus):
    if _SKIPS["other"] and _strict() and exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def qwen3_path(model_dir):
    return testing.write_qwen3(model_dir / "qwen3.gguf", seed=0)


@pytest.fixture(scope="session")
def llada_path(model_dir):
    return testing.write_llada(model_dir / "llada.gguf", seed=1)


@pytest.fixture(scope="session")
def dream_path(model_dir):
    return testing.write_dream(model_dir / "dream.gguf", seed=2)


@pytest.fixture(scope="session")
def qwen3_model(qwen3_path):
    with Model(qwen3_path) as model:
        yield model


@pytest.fixture(scope="session")
def llada_model(llada_path):
    with Model(llada_path) as model:
        yield model


@pytest.fixture(scope="session")
def dream_model(dream_path):
    with Model(dream_path) as model:
        yield model
