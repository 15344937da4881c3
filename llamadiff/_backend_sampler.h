/* The "backend" sampling route: x0 = argmax, p(x0) and the entropy computed inside llama.cpp's
 * compute graph (on the device that holds the output layer), through llama.cpp's experimental
 * backend-sampling API (llama_sampler_i.backend_apply; see DESIGN §2). The logits never reach
 * the host: llama.cpp copies back one token and two floats per output row.
 *
 * build_sampling() calls backend_apply once per output row with a 1-D view of that row.
 * Building the ops per row would put ~10 graph nodes (and kernel launches) per row into
 * every decode; instead the first call of a graph builds them once over the whole logits
 * matrix the views point into (view_src) and every row gets views of the batched results.
 *
 * Only greedy decoding (temperature 0, no top-k / top-p): drawing with llamadiff's
 * counter-based RNG is not expressible with ggml ops. The mask token is excluded by adding
 * -1e30 to its logit (a finite value, so p * (x - max) stays 0 there instead of NaN).
 * Per row the graph yields: sampled = argmax (I32), probs = [p(x0), entropy].
 */
#ifndef LLAMADIFF_BACKEND_SAMPLER_H
#define LLAMADIFF_BACKEND_SAMPLER_H

#include <cmath>
#include <cstdint>
#include <new>

#include "ggml.h"
#include "llama.h"

struct ld_bs_state {
    int32_t mask_id;
    // per graph: the logits matrix the batched results belong to, and those results
    ggml_tensor *src;
    ggml_tensor *argmax;   // I32 [R]
    ggml_tensor *stats;    // F32 [2, R]: p(x0), entropy
};

static const char *ld_bs_name(const llama_sampler *) { return "llamadiff-greedy-stats"; }

/* The CPU path of the interface (used by llama.cpp only if the sampler is not offloaded,
 * which llamadiff never relies on): argmax without the mask token. */
static void ld_bs_apply(llama_sampler *smpl, llama_token_data_array *cur_p) {
    auto *st = (ld_bs_state *) smpl->ctx;
    int64_t best = -1;
    for (size_t i = 0; i < cur_p->size; ++i) {
        if (cur_p->data[i].id == st->mask_id) continue;
        if (best < 0 || cur_p->data[i].logit > cur_p->data[best].logit) best = (int64_t) i;
    }
    cur_p->selected = best < 0 ? 0 : best;
}

static void ld_bs_free(llama_sampler *smpl) { delete (ld_bs_state *) smpl->ctx; }

static bool ld_bs_backend_init(llama_sampler *, ggml_backend_buffer_type_t, uint32_t) { return true; }

static void ld_bs_backend_reset(llama_sampler *smpl) {
    auto *st = (ld_bs_state *) smpl->ctx;
    st->src = nullptr;
    st->argmax = nullptr;
    st->stats = nullptr;
}

static void ld_bs_build(ld_bs_state *st, ggml_context *ctx, ggml_tensor *x) {
    const int64_t V = x->ne[0], R = x->ne[1];
    ggml_tensor *xm = x;
    if (st->mask_id >= 0 && st->mask_id < V) {
        // bias row: 0 everywhere, -1e30 at the mask token (constants made by fill, no inputs)
        ggml_tensor *zero = ggml_fill(ctx, ggml_view_1d(ctx, x, V, 0), 0.0f);
        ggml_tensor *one = ggml_view_1d(ctx, x, 1, 0);
        ggml_tensor *val = ggml_fill(ctx, one, -1e30f);
        ggml_tensor *idx = ggml_cast(ctx, ggml_fill(ctx, one, (float) st->mask_id), GGML_TYPE_I32);
        ggml_tensor *bias = ggml_set_rows(ctx, ggml_reshape_2d(ctx, zero, 1, V),
                                          ggml_reshape_2d(ctx, val, 1, 1), idx);
        xm = ggml_add(ctx, x, ggml_reshape_1d(ctx, bias, V));
    }
    ggml_tensor *sm = ggml_soft_max(ctx, xm);                                   // [V, R]
    ggml_tensor *am = ggml_argmax(ctx, xm);                                     // I32 [R]
    ggml_tensor *am2 = ggml_reshape_2d(ctx, am, 1, R);
    ggml_tensor *m = ggml_get_rows(ctx, ggml_reshape_3d(ctx, xm, 1, V, R), am2);   // [1, 1, R]
    ggml_tensor *p1 = ggml_get_rows(ctx, ggml_reshape_3d(ctx, sm, 1, V, R), am2);  // [1, 1, R]
    // H = -log p(argmax) - sum_i p_i (x_i - max)   (log Z = -log p(argmax))
    ggml_tensor *d = ggml_clamp(ctx, ggml_sub(ctx, xm, ggml_reshape_2d(ctx, m, 1, R)), -1e30f, 0.0f);
    ggml_tensor *s = ggml_sum_rows(ctx, ggml_mul(ctx, sm, d));                  // [1, R]
    ggml_tensor *p1r = ggml_reshape_2d(ctx, p1, 1, R);
    ggml_tensor *h = ggml_neg(ctx, ggml_add(ctx, ggml_log(ctx, p1r), s));      // [1, R]
    st->argmax = am;
    st->stats = ggml_concat(ctx, p1r, h, 0);                                    // [2, R]
    ggml_set_name(st->stats, "llamadiff_stats");
}

static void ld_bs_backend_apply(llama_sampler *smpl, ggml_context *ctx, ggml_cgraph *gf,
                                llama_sampler_data *data) {
    (void) gf;
    auto *st = (ld_bs_state *) smpl->ctx;
    ggml_tensor *lg = data->logits;
    ggml_tensor *src = lg->view_src;
    const bool batched = src != nullptr && src->type == GGML_TYPE_F32 && lg->type == GGML_TYPE_F32 &&
                         ggml_is_contiguous(src) && src->ne[0] == lg->ne[0] && ggml_nelements(lg) == lg->ne[0] &&
                         src->ne[2] == 1 && src->ne[3] == 1 && lg->view_offs % src->nb[1] == 0;
    int64_t row = 0;
    if (batched) {
        row = (int64_t) (lg->view_offs / src->nb[1]);
        if (st->src != src) {
            ld_bs_build(st, ctx, src);
            st->src = src;
        }
    } else {
        ld_bs_build(st, ctx, ggml_reshape_2d(ctx, lg, ggml_nelements(lg), 1));
        st->src = nullptr;
    }
    data->sampled = ggml_view_1d(ctx, st->argmax, 1, row * st->argmax->nb[0]);
    data->probs = ggml_view_1d(ctx, st->stats, 2, row * st->stats->nb[1]);
    data->logits = nullptr;       // do not copy the row's logits back
    data->candidates = nullptr;
}

static llama_sampler_i ld_bs_iface = {
    /* .name              = */ ld_bs_name,
    /* .accept            = */ nullptr,
    /* .apply             = */ ld_bs_apply,
    /* .reset             = */ nullptr,
    /* .clone             = */ nullptr,
    /* .free              = */ ld_bs_free,
    /* .backend_init      = */ ld_bs_backend_init,
    /* .backend_accept    = */ nullptr,
    /* .backend_apply     = */ ld_bs_backend_apply,
    /* .backend_set_input = */ nullptr,
    /* .backend_reset     = */ ld_bs_backend_reset,
    /* .copy_state        = */ nullptr,
};

/* A sampler chain holding the greedy-stats sampler (llama.cpp offloads only chains). */
static llama_sampler *ld_bs_chain_new(int32_t mask_id) {
    auto *st = new (std::nothrow) ld_bs_state{mask_id, nullptr, nullptr, nullptr};
    if (!st) return nullptr;
    llama_sampler *smpl = llama_sampler_init(&ld_bs_iface, st);
    llama_sampler_chain_params params = llama_sampler_chain_default_params();
    params.no_perf = true;
    llama_sampler *chain = llama_sampler_chain_init(params);
    llama_sampler_chain_add(chain, smpl);
    return chain;
}

#endif
