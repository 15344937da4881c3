"""A NumPy port of upstream llama.cpp's ``diffusion_generate`` (examples/diffusion/diffusion.cpp)
and of the llama.cpp samplers it uses, written from the pinned source.

It stands in for the ``llama-diffusion-cli`` binary in the parity tests when that binary is
not built (it takes minutes to build); the parity test checks the port against the binary
whenever the binary exists. Logits come from llama.cpp itself (a llamadiff Context decoding
the whole sequence with every row, as upstream does); everything after the logits -- the
three std::mt19937 streams, the sampler chain (temperature, dist), the confidence of each
algorithm, the transfer schedules, the partial sort -- is reimplemented here.

Covered: temperature (0 or > 0), no top-k / top-p, alg_temp = 0, no Gumbel noise, cfg 0:
the settings the CLI exposes besides top-k / top-p.
"""

import numpy as np

ORIGIN, ENTROPY, MARGIN, RANDOM, CONFIDENCE = range(5)
ALGORITHMS = ("origin", "entropy", "margin", "random", "confidence")


class StdMt19937:
    """std::mt19937 with libstdc++'s uniform_real_distribution<double / float>(0, 1)."""

    def __init__(self, seed):
        self.bits = np.random.MT19937(0)
        self.bits._legacy_seeding(seed & 0xFFFFFFFF)    # = std::mt19937(seed)

    def _raw(self):
        return float(self.bits.random_raw())

    def uniform_double(self):
        # generate_canonical<double, 53>: two 32-bit draws
        s = np.float64(self._raw()) + np.float64(self._raw()) * np.float64(2.0 ** 32)
        r = s / np.float64(2.0 ** 64)
        return float(r) if r < 1.0 else float(np.nextafter(1.0, 0.0))

    def uniform_float(self):
        # generate_canonical<float, 24>: one 32-bit draw, float arithmetic
        r = np.float32(self._raw()) / np.float32(2.0 ** 32)
        return r if r < np.float32(1.0) else np.nextafter(np.float32(1.0), np.float32(0.0))


def _expf(x):
    # glibc's expf is correctly rounded in practice: round the double result once
    return np.exp(x.astype(np.float64)).astype(np.float32)


def _logf(x):
    return np.log(x.astype(np.float64)).astype(np.float32)


def chain_sample(row, temperature, rng):
    """llama.cpp's chain [temp if > 0] + dist over the unsorted full vocabulary.

    Returns (token, probabilities of the candidate array) like cur_p after the chain.
    """
    logits = row.astype(np.float32)
    if temperature > 0:
        logits = logits / np.float32(temperature)
    p = _expf(logits - logits.max())
    sum_cum = float(np.cumsum(p.astype(np.float64))[-1])    # double, sequential
    target = sum_cum * rng.uniform_double()
    run = np.cumsum(p.astype(np.float64))
    hits = np.nonzero(run >= target)[0]
    selected = int(hits[0]) if len(hits) else len(p) - 1
    probs = (p.astype(np.float64) / sum_cum).astype(np.float32)
    return selected, probs


def transfer_count(step, total_steps, remaining, eps, num_transfer):
    if num_transfer is None:
        t = np.float32(1.0) - np.float32(step) / np.float32(total_steps) * (np.float32(1.0) - np.float32(eps))
        s = np.float32(1.0) - np.float32(step + 1) / np.float32(total_steps) * (np.float32(1.0) - np.float32(eps))
        p = (np.float32(1.0) - s / t) if step < total_steps - 1 else np.float32(1.0)
        return int(np.float32(remaining) * p)
    if step < len(num_transfer):
        return num_transfer[step]
    return remaining // (total_steps - step)


def diffusion_generate(logits_fn, prompt, max_length, mask_id, *, steps, algorithm="confidence",
                       block_length=0, eps=0.0, temperature=0.0, seed=0, shift_logits=True):
    """Upstream's loop. ``logits_fn(tokens)`` returns float32 logits (len(tokens), n_vocab)."""
    alg = ALGORITHMS.index(algorithm)
    x = list(prompt) + [mask_id] * (max_length - len(prompt))
    n_input = len(prompt)
    rng = StdMt19937(seed)          # origin / random / Gumbel
    chain_rng = StdMt19937(seed)    # the chain's dist sampler
    if block_length:
        assert max_length % block_length == 0
        num_blocks = max_length // block_length
        assert steps % num_blocks == 0
        steps_per_block = steps // num_blocks
    else:
        num_blocks, steps_per_block = 1, steps
    for block in range(num_blocks):
        if block_length:
            start = n_input + block * block_length
            end = min(n_input + (block + 1) * block_length, max_length)
            count = sum(1 for i in range(start, end) if x[i] == mask_id)
            base, rem = divmod(count, steps_per_block)
            num_transfer = [base + (1 if i < rem else 0) for i in range(steps_per_block)]
        else:
            start, end, num_transfer = 0, max_length, None
        for step in range(steps_per_block):
            logits = logits_fn(x)

            def row(pos):
                return logits[0] if (shift_logits and pos == 0) else logits[pos - 1 if shift_logits else pos]

            masks = [i for i in range(start, end) if x[i] == mask_id]
            if not masks:
                break
            if alg == ORIGIN:
                p_transfer = np.float32(transfer_count(step, steps_per_block, len(masks), eps, num_transfer)) \
                    / np.float32(len(masks))
                for pos in masks:
                    if rng.uniform_float() < p_transfer:
                        x[pos] = chain_sample(row(pos), temperature, chain_rng)[0]
                continue
            confidences, sampled = [], []
            for i, pos in enumerate(masks):
                token, probs = chain_sample(row(pos), temperature, chain_rng)
                if alg == ENTROPY:
                    terms = probs * _logf(probs + np.float32(1e-10))
                    conf = -np.cumsum(terms, dtype=np.float32)[-1]
                elif alg == MARGIN:
                    conf = probs[0] - probs[1]
                elif alg == RANDOM:
                    conf = rng.uniform_float()
                else:
                    conf = probs[token]
                confidences.append((float(np.float32(conf)), i))
                sampled.append(token)
            n = transfer_count(step, steps_per_block, len(masks), eps, num_transfer)
            if n > 0:
                order = sorted(confidences, key=lambda c: (-c[0], c[1]))
                for conf, i in order[:min(n, len(order))]:
                    x[masks[i]] = sampled[i]
    return x
