# cython: language_level=3
"""Declarations of the llama.cpp C API that llamadiff uses (``include/llama.h``).

Declarations only, no logic: grouped and ordered like the header so each one can be
found there. Structs list just the fields we read or write; the C compiler sees the
real definitions. Downstream Cython code can ``from llamadiff.llama cimport *``.
"""

from libc.stdint cimport int8_t, int32_t, int64_t, uint32_t, uint64_t
from libcpp cimport bool as cbool


cdef extern from "ggml.h" nogil:
    ctypedef enum ggml_type:
        GGML_TYPE_F32
        GGML_TYPE_F16
        GGML_TYPE_Q4_0
        GGML_TYPE_Q8_0
        GGML_TYPE_BF16

    ctypedef enum ggml_log_level:
        GGML_LOG_LEVEL_NONE
        GGML_LOG_LEVEL_DEBUG
        GGML_LOG_LEVEL_INFO
        GGML_LOG_LEVEL_WARN
        GGML_LOG_LEVEL_ERROR
        GGML_LOG_LEVEL_CONT

    ctypedef void (*ggml_log_callback)(ggml_log_level level, const char * text, void * user_data) noexcept
    ctypedef cbool (*ggml_abort_callback)(void * data) noexcept

    struct ggml_backend_buffer:
        pass
    # a tensor: the fields llamadiff reads (the logits that stay on the device, patch 0008)
    struct ggml_tensor:
        ggml_type type
        ggml_backend_buffer * buffer
        int64_t ne[4]
        size_t nb[4]
        void * data
    cbool ggml_is_contiguous(const ggml_tensor * tensor)
    size_t ggml_nbytes(const ggml_tensor * tensor)


cdef extern from "gguf.h" nogil:
    # the GGUF header, read by llamadiff.hparams to validate hyper-parameter values
    ctypedef enum gguf_type:
        GGUF_TYPE_UINT8
        GGUF_TYPE_INT8
        GGUF_TYPE_UINT16
        GGUF_TYPE_INT16
        GGUF_TYPE_UINT32
        GGUF_TYPE_INT32
        GGUF_TYPE_FLOAT32
        GGUF_TYPE_BOOL
        GGUF_TYPE_STRING
        GGUF_TYPE_ARRAY
        GGUF_TYPE_UINT64
        GGUF_TYPE_INT64
        GGUF_TYPE_FLOAT64

    struct gguf_context:
        pass
    struct ggml_context:
        pass
    struct gguf_init_params:
        cbool no_alloc
        ggml_context ** ctx

    gguf_context * gguf_init_from_file(const char * fname, gguf_init_params params)
    void gguf_free(gguf_context * ctx)
    int64_t gguf_get_n_kv(const gguf_context * ctx)
    const char * gguf_get_key(const gguf_context * ctx, int64_t key_id)
    gguf_type gguf_get_kv_type(const gguf_context * ctx, int64_t key_id)
    gguf_type gguf_get_arr_type(const gguf_context * ctx, int64_t key_id)
    const void * gguf_get_val_data(const gguf_context * ctx, int64_t key_id)
    const char * gguf_get_val_str(const gguf_context * ctx, int64_t key_id)
    size_t gguf_get_arr_n(const gguf_context * ctx, int64_t key_id)
    const void * gguf_get_arr_data(const gguf_context * ctx, int64_t key_id)
    const char * gguf_get_arr_str(const gguf_context * ctx, int64_t key_id, size_t i)
    int64_t gguf_find_key(const gguf_context * ctx, const char * key)
    int64_t gguf_get_n_tensors(const gguf_context * ctx)
    const char * gguf_get_tensor_name(const gguf_context * ctx, int64_t tensor_id)
    const int64_t * gguf_get_tensor_ne(const gguf_context * ctx, int64_t tensor_id)


cdef extern from "ggml-backend.h" nogil:
    # backend registry: used to add ggml RPC servers as devices (llamadiff.rpc)
    ctypedef struct ggml_backend_reg:
        pass
    ctypedef struct ggml_backend_device:
        pass
    ctypedef ggml_backend_reg * ggml_backend_reg_t
    ctypedef ggml_backend_device * ggml_backend_dev_t
    ggml_backend_reg_t ggml_backend_reg_by_name(const char * name)
    void * ggml_backend_reg_get_proc_address(ggml_backend_reg_t reg, const char * name)
    size_t ggml_backend_reg_dev_count(ggml_backend_reg_t reg)
    ggml_backend_dev_t ggml_backend_reg_dev_get(ggml_backend_reg_t reg, size_t index)
    void ggml_backend_register(ggml_backend_reg_t reg)
    const char * ggml_backend_dev_name(ggml_backend_dev_t device)
    # devices of the back ends this build has (llamadiff.devices)
    # (enum ggml_backend_dev_type; its tag and the function share that name in C)
    enum:
        GGML_BACKEND_DEVICE_TYPE_CPU
        GGML_BACKEND_DEVICE_TYPE_GPU
        GGML_BACKEND_DEVICE_TYPE_IGPU
        GGML_BACKEND_DEVICE_TYPE_ACCEL
    size_t ggml_backend_dev_count()
    ggml_backend_dev_t ggml_backend_dev_get(size_t index)
    const char * ggml_backend_dev_description(ggml_backend_dev_t device)
    int ggml_backend_dev_kind_of "ggml_backend_dev_type"(ggml_backend_dev_t device)
    # where a tensor's memory is (llamadiff._core.Context.step_logits)
    ctypedef ggml_backend_buffer * ggml_backend_buffer_t
    ctypedef struct ggml_backend_buffer_type:
        pass
    ctypedef ggml_backend_buffer_type * ggml_backend_buffer_type_t
    cbool ggml_backend_buffer_is_host(ggml_backend_buffer_t buffer)
    ggml_backend_buffer_type_t ggml_backend_buffer_get_type(ggml_backend_buffer_t buffer)
    ggml_backend_dev_t ggml_backend_buft_get_device(ggml_backend_buffer_type_t buft)
    void ggml_backend_tensor_get(const ggml_tensor * tensor, void * data, size_t offset, size_t size)


cdef extern from "llama.h" nogil:
    # ------------------------------------------------------------------ basic types
    cdef struct llama_vocab:
        pass
    cdef struct llama_model:
        pass
    cdef struct llama_context:
        pass
    cdef struct llama_memory_i:
        pass
    ctypedef llama_memory_i * llama_memory_t

    ctypedef int32_t llama_pos
    ctypedef int32_t llama_token
    ctypedef int32_t llama_seq_id

    int LLAMA_TOKEN_NULL
    uint32_t LLAMA_DEFAULT_SEED

    cdef enum llama_vocab_type:
        LLAMA_VOCAB_TYPE_NONE
        LLAMA_VOCAB_TYPE_SPM
        LLAMA_VOCAB_TYPE_BPE
        LLAMA_VOCAB_TYPE_WPM
        LLAMA_VOCAB_TYPE_UGM
        LLAMA_VOCAB_TYPE_RWKV
        LLAMA_VOCAB_TYPE_PLAMO2

    ctypedef enum llama_token_attr:
        LLAMA_TOKEN_ATTR_UNDEFINED
        LLAMA_TOKEN_ATTR_UNKNOWN
        LLAMA_TOKEN_ATTR_UNUSED
        LLAMA_TOKEN_ATTR_NORMAL
        LLAMA_TOKEN_ATTR_CONTROL
        LLAMA_TOKEN_ATTR_USER_DEFINED
        LLAMA_TOKEN_ATTR_BYTE
        LLAMA_TOKEN_ATTR_NORMALIZED
        LLAMA_TOKEN_ATTR_LSTRIP
        LLAMA_TOKEN_ATTR_RSTRIP
        LLAMA_TOKEN_ATTR_SINGLE_WORD

    ctypedef enum llama_ftype:
        LLAMA_FTYPE_ALL_F32
        LLAMA_FTYPE_MOSTLY_F16
        LLAMA_FTYPE_MOSTLY_Q8_0
        LLAMA_FTYPE_MOSTLY_Q4_0
        LLAMA_FTYPE_MOSTLY_Q4_K_M
        LLAMA_FTYPE_MOSTLY_Q5_K_M
        LLAMA_FTYPE_MOSTLY_Q6_K
        LLAMA_FTYPE_GUESSED

    const char * llama_ftype_name(llama_ftype ftype)

    ctypedef enum llama_rope_type:
        LLAMA_ROPE_TYPE_NONE
        LLAMA_ROPE_TYPE_NORM
        LLAMA_ROPE_TYPE_NEOX
        LLAMA_ROPE_TYPE_MROPE
        LLAMA_ROPE_TYPE_IMROPE
        LLAMA_ROPE_TYPE_VISION

    ctypedef enum llama_attention_type:
        LLAMA_ATTENTION_TYPE_UNSPECIFIED
        LLAMA_ATTENTION_TYPE_CAUSAL
        LLAMA_ATTENTION_TYPE_NON_CAUSAL

    ctypedef enum llama_flash_attn_type:
        LLAMA_FLASH_ATTN_TYPE_AUTO
        LLAMA_FLASH_ATTN_TYPE_DISABLED
        LLAMA_FLASH_ATTN_TYPE_ENABLED

    ctypedef enum llama_split_mode:
        LLAMA_SPLIT_MODE_NONE
        LLAMA_SPLIT_MODE_LAYER
        LLAMA_SPLIT_MODE_ROW

    ctypedef enum llama_load_mode:
        LLAMA_LOAD_MODE_AUTO
        LLAMA_LOAD_MODE_NONE
        LLAMA_LOAD_MODE_MMAP
        LLAMA_LOAD_MODE_MLOCK
        LLAMA_LOAD_MODE_MMAP_MLOCK
        LLAMA_LOAD_MODE_DIRECT_IO

    # Input of llama_decode: per token its id, position, sequence ids and output flag.
    ctypedef struct llama_batch:
        int32_t n_tokens
        llama_token * token
        float * embd
        llama_pos * pos
        int32_t * n_seq_id
        llama_seq_id ** seq_id
        int8_t * logits

    ctypedef cbool (*llama_progress_callback)(float progress, void * user_data) noexcept

    cdef struct llama_model_params:
        ggml_backend_dev_t * devices   # NULL-terminated; NULL: all available devices
        int32_t n_gpu_layers
        llama_split_mode split_mode
        llama_load_mode load_mode
        int32_t main_gpu
        llama_progress_callback progress_callback
        void * progress_callback_user_data
        bint vocab_only
        bint check_tensors
        bint use_extra_bufts
        bint no_host
        bint no_alloc

    cdef struct llama_context_params:
        uint32_t n_ctx
        uint32_t n_batch
        uint32_t n_ubatch
        uint32_t n_seq_max
        uint32_t n_outputs_max
        uint32_t n_outputs_max_per_seq
        int32_t n_threads
        int32_t n_threads_batch
        llama_attention_type attention_type
        llama_flash_attn_type flash_attn_type
        ggml_type type_k
        ggml_type type_v
        ggml_abort_callback abort_callback
        void * abort_callback_data
        bint embeddings
        bint offload_kqv
        bint no_perf
        bint op_offload
        bint kv_unified
        bint diffusion_kv_cache   # [llamadiff patch 0004] KV cache for diffusion archs

    ctypedef struct llama_chat_message:
        const char * role
        const char * content

    # ------------------------------------------------------------------ backend and defaults
    const char * llama_version()
    llama_model_params llama_model_default_params()
    llama_context_params llama_context_default_params()
    void llama_backend_init()
    void llama_backend_free()
    const char * llama_print_system_info()
    bint llama_supports_mmap()
    bint llama_supports_gpu_offload()
    bint llama_supports_rpc()
    size_t llama_max_devices()
    size_t llama_max_parallel_sequences()
    int64_t llama_time_us()

    cdef struct llama_model_quantize_params:
        int32_t nthread
        llama_ftype ftype
        bint allow_requantize
        bint quantize_output_tensor
        bint pure

    llama_model_quantize_params llama_model_quantize_default_params()
    uint32_t llama_model_quantize(const char * fname_inp, const char * fname_out,
                                  const llama_model_quantize_params * params) except +

    # ------------------------------------------------------------------ model and context lifetime
    llama_model * llama_model_load_from_file(const char * path_model, llama_model_params params)
    void llama_model_free(llama_model * model)
    llama_context * llama_init_from_model(llama_model * model, llama_context_params params)
    void llama_free(llama_context * ctx)

    # ------------------------------------------------------------------ context queries
    uint32_t llama_n_ctx(const llama_context * ctx)
    uint32_t llama_n_ctx_seq(const llama_context * ctx)
    uint32_t llama_n_batch(const llama_context * ctx)
    uint32_t llama_n_ubatch(const llama_context * ctx)
    uint32_t llama_n_seq_max(const llama_context * ctx)
    const llama_model * llama_get_model(const llama_context * ctx)
    llama_memory_t llama_get_memory(const llama_context * ctx)

    # ------------------------------------------------------------------ model queries and metadata
    const llama_vocab * llama_model_get_vocab(const llama_model * model)
    int32_t llama_model_n_ctx_train(const llama_model * model)
    int32_t llama_model_n_embd(const llama_model * model)
    int32_t llama_model_n_layer(const llama_model * model)
    int32_t llama_model_n_head(const llama_model * model)
    int32_t llama_model_n_head_kv(const llama_model * model)
    int32_t llama_model_meta_val_str(const llama_model * model, const char * key, char * buf, size_t buf_size)
    int32_t llama_model_meta_count(const llama_model * model)
    int32_t llama_model_meta_key_by_index(const llama_model * model, int32_t i, char * buf, size_t buf_size)
    int32_t llama_model_meta_val_str_by_index(const llama_model * model, int32_t i, char * buf, size_t buf_size)
    int32_t llama_model_desc(const llama_model * model, char * buf, size_t buf_size)
    llama_ftype llama_model_ftype(const llama_model * model)
    uint64_t llama_model_size(const llama_model * model)
    const char * llama_model_chat_template(const llama_model * model, const char * name)
    uint64_t llama_model_n_params(const llama_model * model)
    bint llama_model_has_encoder(const llama_model * model)
    bint llama_model_has_decoder(const llama_model * model)
    bint llama_model_is_recurrent(const llama_model * model)
    bint llama_model_is_hybrid(const llama_model * model)
    bint llama_model_is_diffusion(const llama_model * model)
    int32_t llama_model_n_swa(const llama_model * model)
    llama_rope_type llama_model_rope_type(const llama_model * model)

    # ------------------------------------------------------------------ memory (KV cache)
    void llama_memory_clear(llama_memory_t mem, bint data)
    bint llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1)
    void llama_memory_seq_cp(llama_memory_t mem, llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1)
    void llama_memory_seq_keep(llama_memory_t mem, llama_seq_id seq_id)
    llama_pos llama_memory_seq_pos_min(llama_memory_t mem, llama_seq_id seq_id)
    llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id)

    # ------------------------------------------------------------------ batches and decoding
    llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max)
    void llama_batch_free(llama_batch batch)
    # except +: a C++ exception escaping llama.cpp becomes a Python RuntimeError
    int32_t llama_decode(llama_context * ctx, llama_batch batch) except +

    void llama_set_n_threads(llama_context * ctx, int32_t n_threads, int32_t n_threads_batch)
    int32_t llama_n_threads(llama_context * ctx)
    int32_t llama_n_threads_batch(llama_context * ctx)
    void llama_set_causal_attn(llama_context * ctx, bint causal_attn)
    bint llama_get_causal_attn(const llama_context * ctx)
    # added by vendor/patches/0003: block-causal KV mask in non-causal contexts (0: off)
    void llama_set_block_causal_attn(llama_context * ctx, int32_t n_block)
    void llama_set_logits_on_device(llama_context * ctx, cbool on)           # patch 0008
    ggml_tensor * llama_get_logits_tensor(llama_context * ctx)              # patch 0008
    # added by vendor/patches/0012: diffusion-gemma's decoder inputs (self-conditioning rows of
    # the next decode's tokens, the inverse temperature of each output row)
    void llama_set_self_conditioning(llama_context * ctx, const float * embd, int32_t n_rows,
                                     const float * inv_temp, int32_t n_out)
    void llama_set_embeddings(llama_context * ctx, cbool embeddings)
    float * llama_get_embeddings(llama_context * ctx)
    void llama_set_abort_callback(llama_context * ctx, ggml_abort_callback abort_callback, void * abort_callback_data)
    void llama_synchronize(llama_context * ctx)

    float * llama_get_logits(llama_context * ctx)
    float * llama_get_logits_ith(llama_context * ctx, int32_t i)

    # ------------------------------------------------------------------ vocabulary
    # named differently here: in C the function shares its name with the enum
    int llama_vocab_type_of "llama_vocab_type"(const llama_vocab * vocab)
    int32_t llama_vocab_n_tokens(const llama_vocab * vocab)
    const char * llama_vocab_get_text(const llama_vocab * vocab, llama_token token)
    float llama_vocab_get_score(const llama_vocab * vocab, llama_token token)
    llama_token_attr llama_vocab_get_attr(const llama_vocab * vocab, llama_token token)
    bint llama_vocab_is_eog(const llama_vocab * vocab, llama_token token)
    bint llama_vocab_is_control(const llama_vocab * vocab, llama_token token)
    llama_token llama_vocab_bos(const llama_vocab * vocab)
    llama_token llama_vocab_eos(const llama_vocab * vocab)
    llama_token llama_vocab_eot(const llama_vocab * vocab)
    llama_token llama_vocab_sep(const llama_vocab * vocab)
    llama_token llama_vocab_nl(const llama_vocab * vocab)
    llama_token llama_vocab_pad(const llama_vocab * vocab)
    llama_token llama_vocab_mask(const llama_vocab * vocab)
    bint llama_vocab_get_add_bos(const llama_vocab * vocab)
    bint llama_vocab_get_add_eos(const llama_vocab * vocab)

    # ------------------------------------------------------------------ tokenization
    int32_t llama_tokenize(const llama_vocab * vocab, const char * text, int32_t text_len,
                           llama_token * tokens, int32_t n_tokens_max,
                           bint add_special, bint parse_special) except +
    int32_t llama_token_to_piece(const llama_vocab * vocab, llama_token token, char * buf,
                                 int32_t length, int32_t lstrip, bint special) except +
    int32_t llama_detokenize(const llama_vocab * vocab, const llama_token * tokens, int32_t n_tokens,
                             char * text, int32_t text_len_max, bint remove_special, bint unparse_special) except +

    # ------------------------------------------------------------------ chat templates
    int32_t llama_chat_apply_template(const char * tmpl, const llama_chat_message * chat, size_t n_msg,
                                      bint add_ass, char * buf, int32_t length) except +
    int32_t llama_chat_builtin_templates(const char ** output, size_t len)

    # ------------------------------------------------------------------ logging
    void llama_log_set(ggml_log_callback log_callback, void * user_data)

    # ------------------------------------------------------------------ performance counters
    cdef struct llama_perf_context_data:
        double t_start_ms
        double t_load_ms
        double t_p_eval_ms
        double t_eval_ms
        int32_t n_p_eval
        int32_t n_eval
        int32_t n_reused

    llama_perf_context_data llama_perf_context(const llama_context * ctx)
    void llama_perf_context_reset(llama_context * ctx)

    # ------------------------------------------------------------------ samplers
    # llama.cpp's own CPU samplers: used only by the llama-diffusion-cli compatible mode of
    # full diffusion (rng="llama.cpp"), which must draw exactly what upstream draws.
    ctypedef struct llama_token_data:
        llama_token id
        float logit
        float p

    ctypedef struct llama_token_data_array:
        llama_token_data * data
        size_t size
        int64_t selected
        bint sorted

    cdef struct llama_sampler:
        pass

    cdef struct llama_sampler_chain_params:
        bint no_perf

    llama_sampler_chain_params llama_sampler_chain_default_params()
    llama_sampler * llama_sampler_chain_init(llama_sampler_chain_params params)
    void llama_sampler_chain_add(llama_sampler * chain, llama_sampler * smpl)
    llama_sampler * llama_sampler_init_dist(uint32_t seed)
    llama_sampler * llama_sampler_init_top_k(int32_t k)
    llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep)
    llama_sampler * llama_sampler_init_temp(float t)
    void llama_sampler_apply(llama_sampler * smpl, llama_token_data_array * cur_p) nogil
    void llama_sampler_free(llama_sampler * smpl)
    # backend sampling (llama.cpp's experimental API): a sampler inside the graph, per sequence
    bint llama_set_sampler(llama_context * ctx, llama_seq_id seq_id, llama_sampler * smpl)
    llama_token llama_get_sampled_token_ith(llama_context * ctx, int32_t i)
    float * llama_get_sampled_probs_ith(llama_context * ctx, int32_t i)
    uint32_t llama_get_sampled_probs_count_ith(llama_context * ctx, int32_t i)
