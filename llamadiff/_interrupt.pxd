# cython: language_level=3
"""Ctrl-C inside a running decode (``interrupt.h``): a SIGINT hook in front of Python's
handler raises a flag that the context's abort callback reads between graph nodes."""

cdef extern from "interrupt.h" nogil:
    int ld_install_sigint_hook()
    int ld_interrupt_pending()
    void ld_interrupt_clear()
