"""The tokens of every decoding configuration equal the frozen golden outputs
(tests/golden_outputs.py: every strategy, algorithm, schedule, cache and parallel mode, RNG
mode, batch size, on the six test architectures and both shipped models). A change that means
to alter outputs re-records them (`python tests/golden_outputs.py --record`) and says why."""

import json

import golden_outputs


def test_golden_outputs_unchanged():
    recorded = json.loads(golden_outputs.GOLDEN.read_text())["outputs"]
    now = golden_outputs.run_all()
    assert len(recorded) > 150
    differ = golden_outputs.compare(recorded, now)
    assert differ == [], [(k, recorded.get(k), now.get(k)) for k in differ[:5]]
