# _core_rpc.pxi: included by _core.pyx (one extension module: llamadiff._core).
# ggml RPC: connecting, bounded waits, Ctrl-C; making a native object where RPC servers hold the layers.

ctypedef C.ggml_backend_reg_t (*rpc_add_server_fn)(const char * endpoint) noexcept nogil


cdef void * _rpc_proc(const char * name) except? NULL:
    cdef C.ggml_backend_reg_t rpc = C.ggml_backend_reg_by_name(b"RPC")
    if rpc == NULL:
        raise RuntimeError("this build of llamadiff has no RPC backend; reinstall with LLAMADIFF_RPC=1")
    cdef void * fn = C.ggml_backend_reg_get_proc_address(rpc, name)
    if fn == NULL:
        raise RuntimeError(f"the RPC backend has no {name.decode()} (built without llamadiff's patches?)")
    return fn


def _hook_sigint():
    """Put interrupt.h's SIGINT hook in front of Python's default handler (a handler of the
    user's own is left alone: it decides what Ctrl-C does)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        ld_install_sigint_hook()


# ggml_backend_rpc_set_interrupt (vendor/patches/0006): Ctrl-C switches it on (interrupt.h)
cdef ld_interrupt_fn _rpc_set_interrupt = NULL


cdef int _rpc_prepare(double timeout) except -1:
    """Bound the socket waits of the RPC connections opened from now on (vendor/patches/0006)
    and look up the interrupt switch."""
    global _rpc_set_interrupt
    cdef ld_rpc_set_timeout_fn set_timeout = <ld_rpc_set_timeout_fn> _rpc_proc(b"ggml_backend_rpc_set_timeout")
    if _rpc_set_interrupt == NULL:
        _rpc_set_interrupt = <ld_interrupt_fn> _rpc_proc(b"ggml_backend_rpc_set_interrupt")
        ld_interrupt_set_extra(_rpc_set_interrupt)
    set_timeout(timeout)
    _hook_sigint()
    return 0


cdef int _raise_interrupt() except -1:
    """A Ctrl-C seen by interrupt.h's hook: Python's KeyboardInterrupt (or the exception of a
    handler of the user's), raised even when Python's own flag was taken meanwhile -- by a log
    callback that ran Python code, say."""
    PyErr_CheckSignals()
    raise KeyboardInterrupt


cdef inline void _rpc_enter() noexcept nogil:
    """Before a call that may wait on RPC servers: from now on Ctrl-C interrupts those waits."""
    ld_interrupt_clear()


cdef inline bint _rpc_leave() noexcept nogil:
    """After it: True when SIGINT came meanwhile (the caller then runs PyErr_CheckSignals);
    the RPC interrupt switch goes off again, so later calls are not cut short."""
    cdef bint seen = ld_interrupt_pending()
    if _rpc_set_interrupt != NULL:
        _rpc_set_interrupt(False)
    return seen


cdef int _add_rpc_devices(str endpoint, vector[C.ggml_backend_dev_t] & devices,
                          double timeout) except -1:
    """Connect to a ggml RPC server (llama.cpp keeps one connection per endpoint) and append
    its devices."""
    cdef rpc_add_server_fn add = <rpc_add_server_fn> _rpc_proc(b"ggml_backend_rpc_add_server")
    cdef bytes bend = endpoint.encode()
    cdef const char * cend = bend
    cdef C.ggml_backend_reg_t reg
    with nogil:
        reg = add(cend)
    if reg == NULL:
        if rpc_connection_failed():
            detail = "; ".join(_take_problems()[-2:])
            raise ConnectionError(f"RPC server {endpoint} stopped answering after the handshake "
                                  f"(no progress within rpc_timeout={timeout:g} s, or the connection "
                                  f"was closed or interrupted){': ' + detail if detail else ''}")
        raise ConnectionError(f"RPC server {endpoint} reports no devices")
    # not ggml_backend_register()ed: registered devices are offered to every later model
    # (and probed when it loads), so a server that goes away would break unrelated models;
    # the devices reach llama.cpp through llama_model_params.devices only
    cdef size_t i
    for i in range(C.ggml_backend_reg_dev_count(reg)):
        devices.push_back(C.ggml_backend_reg_dev_get(reg, i))
    return 0


ctypedef cbool (*rpc_failed_fn)() noexcept nogil
cdef rpc_failed_fn _rpc_failed = NULL


cdef bint rpc_connection_failed() noexcept:
    """True once an RPC connection of this process was lost (vendor/patches/0005)."""
    global _rpc_failed
    cdef C.ggml_backend_reg_t rpc
    if _rpc_failed == NULL:
        rpc = C.ggml_backend_reg_by_name(b"RPC")
        if rpc == NULL:
            return False
        _rpc_failed = <rpc_failed_fn> C.ggml_backend_reg_get_proc_address(rpc, b"ggml_backend_rpc_connection_failed")
        if _rpc_failed == NULL:
            return False
    return _rpc_failed()


ctypedef void * (*native_create_fn)(void * args) noexcept nogil
ctypedef void (*native_free_fn)(void * obj) noexcept nogil


cdef void * _create_native(native_create_fn create, void * args, native_free_fn free_obj, bint rpc,
                           str lost, double timeout, list problems, bint entered=False) except? NULL:
    """Make a native object (a model, a context) with ``create(args)``, the GIL released. Where
    RPC servers hold the layers (``rpc``), Ctrl-C interrupts the waits on them (the half-made
    object is freed, KeyboardInterrupt raised) and a connection lost meanwhile is a
    ConnectionError that starts with ``lost``. llama.cpp's problems logged meanwhile are added
    to ``problems``; NULL: llama.cpp failed (the caller says how, with them). ``entered``: the
    caller already cleared the problems and entered the RPC wait (its own connecting), so one
    Ctrl-C window and one list of problems span both."""
    cdef void * obj = NULL
    if not entered:
        _take_problems()
        if rpc:
            _rpc_enter()
    try:
        with nogil:
            obj = create(args)
    finally:
        if rpc and _rpc_leave():
            if obj != NULL:
                with nogil:
                    free_obj(obj)
            _raise_interrupt()
    problems.extend(_take_problems())
    if rpc and rpc_connection_failed():
        if obj != NULL:
            with nogil:     # frees remote buffers: the RPC thread may need the GIL to log
                free_obj(obj)
        raise ConnectionError(f"{lost} (no progress within rpc_timeout={timeout:g} s, or the connection "
                              "was closed or interrupted): " + ("; ".join(problems[-3:]) or "no reason given"))
    return obj


cdef struct _ModelLoad:
    const char * path
    C.llama_model_params params


cdef void * _load_model(void * args) noexcept nogil:
    cdef _ModelLoad * a = <_ModelLoad *> args
    return C.llama_model_load_from_file(a.path, a.params)


cdef void _free_model(void * obj) noexcept nogil:
    C.llama_model_free(<llama_model *> obj)


cdef struct _ContextInit:
    llama_model * model
    C.llama_context_params params


cdef void * _init_context(void * args) noexcept nogil:
    cdef _ContextInit * a = <_ContextInit *> args
    return C.llama_init_from_model(a.model, a.params)


cdef void _free_context(void * obj) noexcept nogil:
    C.llama_free(<llama_context *> obj)
