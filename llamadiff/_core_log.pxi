# _core_log.pxi: included by _core.pyx (one extension module: llamadiff._core).
# llama.cpp's log, forwarded to the ``llamadiff.llama`` logger; the problems it reports.

logger = logging.getLogger("llamadiff.llama")
# Quiet by default: with a NullHandler Python's last-resort handler does not print
# llama.cpp's warnings; configure logging (or add a handler) to see them.
logger.addHandler(logging.NullHandler())

_PY_LEVEL = {
    C.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    C.GGML_LOG_LEVEL_INFO: logging.INFO,
    C.GGML_LOG_LEVEL_WARN: logging.WARNING,
    C.GGML_LOG_LEVEL_ERROR: logging.ERROR,
}

# Lines below this ggml level are dropped without taking the GIL (set_log_level).
cdef int _min_forward_level = C.GGML_LOG_LEVEL_INFO
cdef int _last_level = C.GGML_LOG_LEVEL_INFO
cdef bint _python_alive = True

_partial_line = []
# Recent warnings and errors, quoted in exceptions when a llama.cpp call fails.
_recent_problems = collections.deque(maxlen=16)


cdef void _log_callback(ggml_log_level level, const char * text, void * user_data) noexcept nogil:
    global _last_level
    cdef int lvl = level
    if lvl == C.GGML_LOG_LEVEL_CONT:
        lvl = _last_level          # a continuation of the previous message
    else:
        _last_level = lvl
    if (lvl < _min_forward_level and lvl < C.GGML_LOG_LEVEL_WARN) or not _python_alive:
        return
    with gil:
        try:
            _dispatch_log(lvl, text)
        except KeyboardInterrupt:
            PyErr_SetInterrupt()    # Ctrl-C handled while logging: keep it for the interrupted call
        except BaseException:
            pass


cdef void _silent_callback(ggml_log_level level, const char * text, void * user_data) noexcept nogil:
    pass


cdef _dispatch_log(int lvl, const char * text):
    piece = text.decode("utf-8", "replace")
    _partial_line.append(piece)
    if not piece.endswith("\n"):
        return
    message = "".join(_partial_line).rstrip("\n")
    _partial_line.clear()
    if lvl >= C.GGML_LOG_LEVEL_WARN:
        _recent_problems.append(message.strip())
    py_level = _PY_LEVEL.get(lvl, logging.DEBUG)
    if logger.isEnabledFor(py_level):
        logger.log(py_level, message)


def set_log_level(level):
    """Forward llama.cpp messages at or above ``level`` (a ``logging`` level) to Python.

    Also sets the level of the ``llamadiff.llama`` logger. Warnings and errors are always
    collected (they are quoted in exceptions); DEBUG lines are dropped unless asked for
    here, since forwarding them costs a GIL round trip each.
    """
    global _min_forward_level
    level = logging._checkLevel(level)
    logger.setLevel(level)
    if level <= logging.DEBUG:
        _min_forward_level = C.GGML_LOG_LEVEL_DEBUG
    elif level <= logging.INFO:
        _min_forward_level = C.GGML_LOG_LEVEL_INFO
    elif level <= logging.WARNING:
        _min_forward_level = C.GGML_LOG_LEVEL_WARN
    else:
        _min_forward_level = C.GGML_LOG_LEVEL_ERROR


def _take_problems():
    """Return and forget the llama.cpp warnings/errors logged since the last call."""
    lines = [line for line in _recent_problems if line]
    _recent_problems.clear()
    return lines


def _at_exit():
    # After finalization begins, a callback must not touch Python objects.
    global _python_alive
    _python_alive = False
    C.llama_log_set(_silent_callback, NULL)


C.llama_log_set(_log_callback, NULL)
# One backend initialisation per process (module import happens once).
C.llama_backend_init()
atexit.register(_at_exit)
