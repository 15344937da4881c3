# cython: language_level=3
"""Public Cython declarations of the row samplers (implemented in ``llamadiff._sampling``).

``from llamadiff.sampling cimport RowSampler, SamplingParams, RowResult`` to write a sampler
route, or to sample logits rows from Cython with the CPU kernels (``sample_rows``).
"""

from llamadiff._sampling cimport (SamplingParams, RowResult, Candidate, RowSampler, CpuRowSampler,
                                  sample_row,
                                  sample_rows, check_rows, check_logits)
