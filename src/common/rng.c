/* splitmix64-based random numbers; see include/cfx/rng.h. */
#include "cfx/rng.h" /* defines: cfx_rng, cfx_hash3, cfx_shuffle */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

uint64_t cfx_hash3(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t s = a;
    uint64_t h = splitmix64(&s);
    s = h ^ b;
    h = splitmix64(&s);
    s = h ^ c;
    return splitmix64(&s);
}

void cfx_rng_seed(cfx_rng *rng, uint64_t seed) { rng->state = seed; }

uint64_t cfx_rng_next(cfx_rng *rng) { return splitmix64(&rng->state); }

float cfx_rng_float(cfx_rng *rng) { return (float)(cfx_rng_next(rng) >> 40) * 0x1.0p-24f; }

double cfx_rng_double(cfx_rng *rng) { return (double)(cfx_rng_next(rng) >> 11) * 0x1.0p-53; }

uint32_t cfx_rng_below(cfx_rng *rng, uint32_t n)
{
    /* Lemire's multiply-shift with rejection. */
    uint64_t m = (uint64_t)(uint32_t)cfx_rng_next(rng) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (uint64_t)(uint32_t)cfx_rng_next(rng) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

void cfx_shuffle(int *idx, int n, cfx_rng *rng)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)cfx_rng_below(rng, (uint32_t)(i + 1));
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}
