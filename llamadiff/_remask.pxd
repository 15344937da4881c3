# cython: language_level=3
# The former name of llamadiff.policy, kept so existing ``cimport``s keep building.
from llamadiff.policy cimport (StepView, RemaskPolicy, Sequential, LowConfidenceStatic,
                               LowConfidenceDynamic, EntropyBounded, top_by_score)
