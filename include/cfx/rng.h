/* Deterministic, counter-based random numbers.
 *
 * Every random decision in cfx is a pure function of (seed, stream, counter),
 * so results never depend on how many ranks share the work. */
#ifndef CFX_RNG_H
#define CFX_RNG_H

#include <stdint.h>

/* A small sequential generator (splitmix64), used where a stream of numbers
 * is consumed in order (weight init, permutations). */
typedef struct {
    uint64_t state;
} cfx_rng;

/* Mixes any number of 64-bit words into one well-spread seed. */
uint64_t cfx_hash3(uint64_t a, uint64_t b, uint64_t c);

void cfx_rng_seed(cfx_rng *rng, uint64_t seed);
uint64_t cfx_rng_next(cfx_rng *rng);
/* Uniform in [0, 1) with 24 bits (float) or 53 bits (double). */
float cfx_rng_float(cfx_rng *rng);
double cfx_rng_double(cfx_rng *rng);
/* Uniform integer in [0, n), without modulo bias. */
uint32_t cfx_rng_below(cfx_rng *rng, uint32_t n);

/* Fisher-Yates shuffle of idx[0..n) driven by rng. */
void cfx_shuffle(int *idx, int n, cfx_rng *rng);

#endif
