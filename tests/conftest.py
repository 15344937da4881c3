"""Shared fixtures: tiny random-weight GGUF models written once per test session."""

import os
import sys

import pytest

from llamadiff import Model, testing

sys.path.insert(0, os.path.dirname(__file__))  # tests/numpy_reference.py


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
