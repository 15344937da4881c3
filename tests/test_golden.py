"""The tokens of every decoding configuration equal the frozen golden outputs
(tests/golden_outputs.py: every strategy, algorithm, schedule, cache and parallel mode, RNG
mode, batch size, on the six test architectures and both shipped models), through both CPU
sampling routes. A change that means to alter outputs re-records them
(`python tests/golden_outputs.py --record`) and says why."""

import json

import pytest

import golden_outputs


# "cpu" samples llama.cpp's host copy of the logits (the reference route), "device" the rows
# where the CPU back end computed them (vendor/patches/0008); "auto" picks one of them here
@pytest.mark.parametrize("sampler", ["auto", "cpu", "device"])
def test_golden_outputs_unchanged(sampler):
    recorded = json.loads(golden_outputs.GOLDEN.read_text())["outputs"]
    now = golden_outputs.run_all(sampler)
    assert len(recorded) > 150
    differ = golden_outputs.compare(recorded, now)
    assert differ == [], [(k, recorded.get(k), now.get(k)) for k in differ[:5]]
