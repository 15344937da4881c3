"""Hostile hyper-parameter values never abort, crash or hang the process (tests/fuzz_values.py).

Every numeric metadata key of the ten test architectures (qwen3, qwen3moe, llada, llada-moe,
dream, rnd1, qwen2, llama, bailingmoe2, mistral3), the RoPE-scaling keys, the model defaults of
generation (diffusion.*) and per-layer arrays, set to 0,
-1, NaN, +-inf and huge values: each case loads and generates in a worker process. About
1,700 cases. The
same for every generation option and Generator argument (about 1,100 more).
"""

import pytest

import fuzz_values

pytestmark = pytest.mark.slow     # the quick subset leaves it out (README: -m "not slow")


def test_every_hostile_value_ends_cleanly():
    todo = fuzz_values.cases()
    assert len(todo) > 1000
    assert {c["arch"] for c in todo} == set(fuzz_values.ARCHS)
    report = fuzz_values.summary(todo, fuzz_values.campaign(todo))
    assert report["failures"] == [], report["failures"][:10]
    # the campaign is not vacuous: most hostile values are refused at load, some still run
    assert report["outcomes"].get("ok ModelLoadError", 0) > 500
    assert report["outcomes"].get("ok generated", 0) > 100


def test_every_hostile_setting_is_refused_or_runs():
    """Every generation option and Generator argument set to 0, -1, huge, NaN, +-inf, a bool,
    a string, None or a list, on a block and a full-diffusion model: a ValueError / TypeError
    with a message, or a normal result -- never an OverflowError, a crash or a hang."""
    todo = fuzz_values.setting_cases()
    report = fuzz_values.summary(todo, fuzz_values.campaign(todo))
    assert report["failures"] == [], report["failures"][:10]
    assert report["outcomes"].get("ok generated", 0) > 50


def test_the_campaign_notices_aborts_and_hangs():
    todo = [{"arch": "selftest", "key": "abort", "value": 0, "type": 4},
            {"arch": "qwen3", "key": "qwen3.rope.freq_base", "value": 10000.0, "type": 6},
            {"arch": "selftest", "key": "hang", "value": 0, "type": 4},
            {"arch": "qwen3", "key": "qwen3.rope.freq_base", "value": 0.0, "type": 6}]
    results = fuzz_values.campaign(todo, case_timeout=10)
    assert results[0].startswith("died (exit -6)")
    assert results[1].startswith("ok generated")
    assert results[2] == "hang"
    assert results[3] == "ok ModelLoadError"
