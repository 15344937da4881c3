# cython: language_level=3
"""Public Cython declarations of llamadiff's core objects (implemented in ``llamadiff._core``).

``from llamadiff.core cimport Model, Context`` reaches the raw llama.cpp handles
(``model.ptr``, ``ctx.ptr``), the shared ``ctx.batch`` and the no-GIL decode entry point.
"""

from llamadiff._core cimport Model, Context
