# cython: language_level=3
"""Ctrl-C inside a running decode (``interrupt.h``): a SIGINT hook in front of Python's
handler raises a flag that the context's abort callback reads between graph nodes, and the
RPC client's interrupt switch (vendor/patches/0006).

The RPC client functions that patch 0006 makes reachable through the RPC registry's
get_proc_address are typed here too."""

from libcpp cimport bool as cbool


cdef extern from "interrupt.h" nogil:
    ctypedef void (*ld_interrupt_fn)(cbool on) noexcept nogil
    int ld_install_sigint_hook()
    int ld_interrupt_pending()
    void ld_interrupt_clear()
    # also switched on by Ctrl-C and off by ld_interrupt_clear (the RPC client's interrupt)
    void ld_interrupt_set_extra(ld_interrupt_fn fn)


# ggml_backend_rpc_set_timeout (0006): bound the socket waits of connections opened from now on
ctypedef void (*ld_rpc_set_timeout_fn)(double seconds) noexcept nogil
