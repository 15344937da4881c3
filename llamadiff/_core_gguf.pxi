# _core_gguf.pxi: included by _core.pyx (one extension module: llamadiff._core).
# GGUF headers read without loading a model (the checks before llama.cpp sees a file).

def _validate_path(path):
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"model path must be a str or os.PathLike, not {type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"model path is a directory, not a GGUF file: {path!r}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"model file is not readable: {path!r}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path!r} is not a GGUF file (it starts with {magic!r}, "
                             "a GGUF file starts with b'GGUF')")
    return path


# GGUF's numeric value types as struct formats (native order: ggml has parsed the file)
_GGUF_STRUCT = {C.GGUF_TYPE_UINT8: "B", C.GGUF_TYPE_INT8: "b", C.GGUF_TYPE_UINT16: "H",
                C.GGUF_TYPE_INT16: "h", C.GGUF_TYPE_UINT32: "I", C.GGUF_TYPE_INT32: "i",
                C.GGUF_TYPE_UINT64: "Q", C.GGUF_TYPE_INT64: "q", C.GGUF_TYPE_FLOAT32: "f",
                C.GGUF_TYPE_FLOAT64: "d", C.GGUF_TYPE_BOOL: "?"}


cdef list _gguf_numbers(C.gguf_type t, const void * data, size_t n):
    """n values of numeric type t at data, as Python numbers."""
    code = _GGUF_STRUCT[t]
    size = struct.calcsize("=" + code)
    return list(struct.unpack(f"={n}{code}", (<const char *> data)[:n * size]))


def read_gguf_header(path):
    """The exact values of a GGUF file's header: ``(metadata, tensor_shapes)``.

    ``metadata`` maps each key to its value: numbers and bools as Python numbers (float32
    values exactly, unlike the strings of ``Model.metadata``), strings as str, numeric arrays
    as lists, string arrays as their length only. ``tensor_shapes`` maps each tensor name to
    its ``ne`` (ggml order: ``ne[0]`` is the row length). Reads only the header (llama.cpp's
    own GGUF parser), not the weights.
    """
    cdef bytes bpath = os.fsencode(os.fspath(path))
    cdef const char * cpath = bpath
    cdef C.gguf_init_params params
    params.no_alloc = True
    params.ctx = NULL
    cdef C.gguf_context * g
    with nogil:
        g = C.gguf_init_from_file(cpath, params)
    if g == NULL:
        raise ModelLoadError(f"{os.fsdecode(bpath)!r}: not a readable GGUF header")
    cdef int64_t i, n
    cdef C.gguf_type t, at
    cdef const int64_t * ne
    meta, shapes = {}, {}
    try:
        for i in range(C.gguf_get_n_kv(g)):
            key = C.gguf_get_key(g, i).decode("utf-8", "replace")
            t = C.gguf_get_kv_type(g, i)
            if t == C.GGUF_TYPE_STRING:
                meta[key] = C.gguf_get_val_str(g, i).decode("utf-8", "replace")
            elif t == C.GGUF_TYPE_ARRAY:
                at = C.gguf_get_arr_type(g, i)
                n = C.gguf_get_arr_n(g, i)
                if at in _GGUF_STRUCT:
                    meta[key] = _gguf_numbers(at, C.gguf_get_arr_data(g, i), n)
                else:
                    meta[key] = n           # strings (the vocabulary) or nested arrays: their count
            elif t in _GGUF_STRUCT:
                meta[key] = _gguf_numbers(t, C.gguf_get_val_data(g, i), 1)[0]
        for i in range(C.gguf_get_n_tensors(g)):
            ne = C.gguf_get_tensor_ne(g, i)
            shapes[C.gguf_get_tensor_name(g, i).decode("utf-8", "replace")] = (ne[0], ne[1], ne[2], ne[3])
    finally:
        C.gguf_free(g)
    return meta, shapes


def read_gguf_strings(path, keys):
    """The string arrays ``keys`` of a GGUF file's header (e.g. ``tokenizer.ggml.tokens``):
    ``{key: [str, ...]}`` for those present (bytes that are not UTF-8 are replaced)."""
    cdef bytes bpath = os.fsencode(os.fspath(path))
    cdef const char * cpath = bpath
    cdef C.gguf_init_params params
    params.no_alloc = True
    params.ctx = NULL
    cdef C.gguf_context * g
    cdef int64_t k
    cdef size_t i, n
    cdef bytes bkey
    with nogil:
        g = C.gguf_init_from_file(cpath, params)
    if g == NULL:
        raise ModelLoadError(f"{os.fsdecode(bpath)!r}: not a readable GGUF header")
    out = {}
    try:
        for key in keys:
            bkey = key.encode()
            k = C.gguf_find_key(g, bkey)
            if k < 0 or C.gguf_get_kv_type(g, k) != C.GGUF_TYPE_ARRAY or \
                    C.gguf_get_arr_type(g, k) != C.GGUF_TYPE_STRING:
                continue
            n = C.gguf_get_arr_n(g, k)
            out[key] = [C.gguf_get_arr_str(g, k, i).decode("utf-8", "replace") for i in range(n)]
    finally:
        C.gguf_free(g)
    return out
