/* Ctrl-C during a decode.

   A decode runs without the GIL, so Python's SIGINT handler only sets a flag that nobody reads
   until the decode returns -- seconds for a long prompt chunk on a big model, or for ever when
   an RPC server stalls. This hook calls the handler it replaced (Python's, so Python still
   raises KeyboardInterrupt when the call returns), then raises ld_interrupt_flag, which the
   context's abort callback (checked by ggml's CPU backend between graph nodes) reads, and turns
   on the extra switch when one is set: the RPC client's (vendor/patches/0006), whose socket
   waits then give up within one 50 ms poll slice. */
#ifndef LLAMADIFF_INTERRUPT_H
#define LLAMADIFF_INTERRUPT_H

#include <signal.h>
#include <string.h>

typedef void (*ld_interrupt_fn)(bool on);

static volatile sig_atomic_t ld_interrupt_flag = 0;
static ld_interrupt_fn volatile ld_interrupt_extra = 0;
static struct sigaction ld_previous_sigint;
static volatile sig_atomic_t ld_hook_installed = 0;

static void ld_on_sigint(int sig, siginfo_t * info, void * uctx) {
    /* Python's handler first: once the decode sees our flag and returns, Python's flag is set */
    if (ld_previous_sigint.sa_flags & SA_SIGINFO) {
        if (ld_previous_sigint.sa_sigaction) ld_previous_sigint.sa_sigaction(sig, info, uctx);
    } else if (ld_previous_sigint.sa_handler != SIG_DFL && ld_previous_sigint.sa_handler != SIG_IGN) {
        ld_previous_sigint.sa_handler(sig);
    }
    __atomic_store_n(&ld_interrupt_flag, 1, __ATOMIC_SEQ_CST);
    ld_interrupt_fn extra = ld_interrupt_extra;
    if (extra) extra(true);
}

/* Put the hook in front of the current SIGINT handler, once it is a real handler (Python's).
   Returns 1 when the hook is in place. A later signal.signal() replaces it; calling this again
   re-installs it in front of the new handler. */
static int ld_install_sigint_hook(void) {
    struct sigaction current, hook;
    if (sigaction(SIGINT, NULL, &current) != 0) return 0;
    if (!(current.sa_flags & SA_SIGINFO) && (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN))
        return 0;                                   /* no handler to chain to: leave it alone */
    if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == ld_on_sigint) return 1;
    memcpy(&ld_previous_sigint, &current, sizeof(current));
    memset(&hook, 0, sizeof(hook));
    hook.sa_sigaction = ld_on_sigint;
    hook.sa_mask = current.sa_mask;
    hook.sa_flags = (current.sa_flags | SA_SIGINFO) & ~SA_RESETHAND;
    if (sigaction(SIGINT, &hook, NULL) != 0) return 0;
    ld_hook_installed = 1;
    return 1;
}

static inline int ld_interrupt_pending(void) { return ld_interrupt_flag != 0; }

/* Before a call: forget an earlier Ctrl-C (Python's own flag still holds it) and switch the
   extra off, so later calls (freeing remote buffers, say) are not cut short. */
static inline void ld_interrupt_clear(void) {
    ld_interrupt_flag = 0;
    ld_interrupt_fn extra = ld_interrupt_extra;
    if (extra) extra(false);
}

static inline void ld_interrupt_set_extra(ld_interrupt_fn fn) { ld_interrupt_extra = fn; }

#endif
