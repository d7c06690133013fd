/* Unit tests of the exact sums (src/dist/exact_sum.c) in one process: the
 * ranks are simulated with the scan / accumulate / finish steps (max and
 * sum over simulated ranks in between), and cfx_exact_sum and
 * cfx_exact_sum_double run on a single MPI rank. Adversarial values, order
 * and grouping independence, the precision bound against long double, no
 * overflow at max_terms, non-finite detection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mpi.h>

#include "cfx/exact_sum.h" /* defines: cfx_exact, cfx_exact_scan, cfx_exact_sum */
#include "cfx/rng.h"       /* defines: cfx_rng */

#define MAX_RANKS 8

/* The sum of chunks[0..k) when chunk c sits on simulated rank owner[c] of
 * n_ranks: each rank scans its chunks, the maxima are combined, each rank
 * accumulates, the int64 sums are added (in rank order rev ? n-1..0 : 0..),
 * and rank 0 finishes. Returns the status of finish, or NONFINITE. */
static int simulate(const size_t *seg_len, int n_segs, size_t n, const float *const *chunks,
                    const int *owner, int k, int n_ranks, int max_terms, int rev, float *out)
{
    cfx_exact x[MAX_RANKS] = {0};
    const float **mine = malloc((size_t)(k + 1) * sizeof *mine);
    for (int r = 0; r < n_ranks; r++) {
        assert_int_equal(cfx_exact_create(&x[r], n, seg_len, n_segs, NULL), 0);
        int m = 0;
        for (int c = 0; c < k; c++)
            if (owner[c] == r)
                mine[m++] = chunks[c];
        cfx_exact_scan(&x[r], mine, m);
    }
    for (int r = 1; r < n_ranks; r++) /* MPI_MAX */
        for (int s = 0; s < n_segs; s++)
            x[0].bits[s] = x[r].bits[s] > x[0].bits[s] ? x[r].bits[s] : x[0].bits[s];
    int status = cfx_exact_first_nonfinite(&x[0]) >= 0 ? CFX_EXACT_NONFINITE : CFX_EXACT_OK;
    for (int r = 0; r < n_ranks && status == CFX_EXACT_OK; r++) {
        memcpy(x[r].bits, x[0].bits, (size_t)n_segs * sizeof *x[0].bits);
        int m = 0;
        for (int c = 0; c < k; c++)
            if (owner[c] == r)
                mine[m++] = chunks[c];
        cfx_exact_accumulate(&x[r], mine, m, max_terms);
    }
    if (status == CFX_EXACT_OK) {
        int64_t *sum = calloc(n + 1, sizeof *sum); /* MPI_SUM */
        for (int i = 0; i < n_ranks; i++)
            for (size_t j = 0; j <= n; j++)
                sum[j] += x[rev ? n_ranks - 1 - i : i].acc[j];
        memcpy(x[0].acc, sum, (n + 1) * sizeof *sum);
        free(sum);
        status = cfx_exact_finish(&x[0], max_terms, out);
    }
    for (int r = 0; r < n_ranks; r++)
        cfx_exact_free(&x[r]);
    free(mine);
    return status;
}

/* All chunks on one rank, in the given order. */
static int sum_one_rank(const size_t *seg_len, int n_segs, size_t n, const float *const *chunks,
                        int k, int max_terms, float *out)
{
    int owner[1024] = {0};
    assert_true(k <= 1024);
    return simulate(seg_len, n_segs, n, chunks, owner, k, 1, max_terms, 0, out);
}

static float uniform(cfx_rng *rng, float lo, float hi)
{
    return lo + (hi - lo) * cfx_rng_float(rng);
}

/* Fills k chunks of n with adversarial values: per element one of huge,
 * tiny, denormal, zero, cancelling pairs, all-equal, FLT_MAX / k. */
static float **adversarial_chunks(int k, size_t n, uint64_t seed)
{
    cfx_rng rng;
    cfx_rng_seed(&rng, seed);
    float **c = malloc((size_t)k * sizeof *c);
    for (int j = 0; j < k; j++)
        c[j] = calloc(n, sizeof(float));
    for (size_t i = 0; i < n; i++) {
        int kind = (int)(i % 7);
        for (int j = 0; j < k; j++) {
            float sign = cfx_rng_float(&rng) < 0.5f ? -1.0f : 1.0f, v;
            switch (kind) {
            case 0: v = sign * ldexpf(uniform(&rng, 1, 2), (int)uniform(&rng, -40, 40)); break;
            case 1: v = j % 2 ? -1e30f : 1e30f; break;                   /* cancels */
            case 2: v = sign * ldexpf(uniform(&rng, 0, 1), -140); break; /* denormal */
            case 3: v = 0.0f; break;
            case 4: v = 0.1f; break; /* all equal */
            case 5: v = sign * FLT_MAX / (float)k; break;
            default: v = j == 0 ? 1e20f : sign * 1e-20f; break; /* huge and tiny */
            }
            c[j][i] = v;
        }
    }
    return c;
}

static void free_chunks(float **c, int k)
{
    for (int j = 0; j < k; j++)
        free(c[j]);
    free(c);
}

/* ---- tests ------------------------------------------------------------------- */

static void test_create_rejects_bad_segments(void **state)
{
    (void)state;
    cfx_exact x;
    cfx_error err;
    size_t len[2] = {3, 4};
    assert_int_equal(cfx_exact_create(&x, 8, len, 2, &err), -1);
    assert_non_null(strstr(err.msg, "segments add up to 7 floats, not 8"));
    assert_int_equal(cfx_exact_create(&x, 0, len, 0, &err), -1);
    assert_int_equal(cfx_exact_create(&x, 7, len, 2, &err), 0);
    cfx_exact_free(&x);
}

/* Zeros-only segments next to non-zero ones; -0 gives +0. */
static void test_zeros(void **state)
{
    (void)state;
    size_t len[3] = {5, 0, 3};
    float a[8] = {0, -0.0f, 0, 0, 0, 1.5f, 0, -2}, b[8] = {-0.0f, 0, 0, 0, 0, 2.5f, 0, 2};
    const float *ch[2] = {a, b};
    float out[8];
    memset(out, 0xff, sizeof out);
    assert_int_equal(sum_one_rank(len, 3, 8, ch, 2, 2, out), CFX_EXACT_OK);
    float want[8] = {0, 0, 0, 0, 0, 4.0f, 0, 0};
    for (int i = 0; i < 8; i++) {
        assert_true(out[i] == want[i]);
        assert_false(signbit(out[i]));
    }
    assert_int_equal(sum_one_rank(len, 3, 8, ch, 0, 2, out), CFX_EXACT_OK); /* no chunk */
    for (int i = 0; i < 8; i++)
        assert_true(out[i] == 0.0f);
}

/* Cancellation: 1e8 + 1 - 1e8 is 0 in float, exactly 1 here; FLT_MAX - FLT_MAX
 * + 1 loses the 1 (below the quantum) but does not overflow. */
static void test_cancellation_is_exact(void **state)
{
    (void)state;
    size_t len[2] = {1, 1};
    float a[2] = {1e8f, FLT_MAX}, b[2] = {1.0f, 1.0f}, c[2] = {-1e8f, -FLT_MAX};
    const float *ch[3] = {a, b, c};
    float out[2];
    assert_int_equal(sum_one_rank(len, 2, 2, ch, 3, 3, out), CFX_EXACT_OK);
    assert_true(out[0] == 1.0f);
    assert_true(out[1] == 0.0f);
}

/* Any permutation of the chunks, any grouping into 1..8 ranks (some owning
 * none), either order of adding the ranks: the same bits. */
static void test_order_and_grouping_independent(void **state)
{
    (void)state;
    enum { K = 24, N = 700 };
    size_t len[4] = {350, 7, 0, 343};
    float **c = adversarial_chunks(K, N, 11);
    float ref[N], out[N];
    assert_int_equal(sum_one_rank(len, 4, N, (const float *const *)c, K, K, ref), CFX_EXACT_OK);
    cfx_rng rng;
    cfx_rng_seed(&rng, 5);
    for (int trial = 0; trial < 60; trial++) {
        const float *perm[K];
        int owner[K];
        for (int j = 0; j < K; j++)
            perm[j] = c[j];
        for (int j = K - 1; j > 0; j--) { /* Fisher-Yates */
            int r = (int)(cfx_rng_float(&rng) * (float)(j + 1)) % (j + 1);
            const float *t = perm[j];
            perm[j] = perm[r], perm[r] = t;
        }
        int n_ranks = 1 + trial % MAX_RANKS;
        for (int j = 0; j < K; j++) /* rank n_ranks - 1 owns nothing when n_ranks > 1 */
            owner[j] = n_ranks == 1
                           ? 0
                           : (int)(cfx_rng_float(&rng) * (float)(n_ranks - 1)) % (n_ranks - 1);
        assert_int_equal(simulate(len, 4, N, perm, owner, K, n_ranks, K, trial % 2, out),
                         CFX_EXACT_OK);
        assert_memory_equal(out, ref, sizeof ref);
    }
    free_chunks(c, K);
}

/* |result - exact| <= 1/2 ulp(result) + T 2^(E-P-1) (+ the long double
 * reference's own error), per element, for the adversarial values. */
static void test_precision_bound(void **state)
{
    (void)state;
    enum { K = 13, N = 5200 };
    int L = 4, P = 62 - L;                                   /* ceil(log2(13)) */
    size_t len[2] = {4500, 700}, start[3] = {0, 4500, 5200}; /* 4500: several blocks */
    float **c = adversarial_chunks(K, N, 3);
    float out[N];
    assert_int_equal(sum_one_rank(len, 2, N, (const float *const *)c, K, K, out), CFX_EXACT_OK);
    for (int s = 0; s < 2; s++) {
        float m = 0;
        for (size_t i = start[s]; i < start[s + 1]; i++)
            for (int j = 0; j < K; j++)
                m = fmaxf(m, fabsf(c[j][i]));
        int e;
        frexpf(m, &e);
        for (size_t i = start[s]; i < start[s + 1]; i++) {
            long double ref = 0, abs_sum = 0;
            for (int j = 0; j < K; j++)
                ref += c[j][i], abs_sum += fabsl(c[j][i]);
            long double err = fabsl((long double)out[i] - ref);
            long double ulp = ldexpl(1, -24) * fabsl((long double)out[i]) + ldexpl(1, -150);
            long double bound = ulp + K * ldexpl(1, e - P - 1) + K * ldexpl(1, -63) * abs_sum;
            if (err > bound)
                fail_msg("element %zu: %.9g vs %.12Lg, error %.3Lg > bound %.3Lg", i, out[i], ref,
                         err, bound);
        }
    }
    free_chunks(c, K);
}

/* T chunks all holding the largest float below 2^E (and FLT_MAX), with one
 * sign: the int64 sums reach T 2^P <= 2^62 without overflow and the result is
 * T v rounded once (infinity, reported, for T FLT_MAX). Also max_terms =
 * INT_MAX with a few terms. */
static void test_no_overflow_at_max_terms(void **state)
{
    (void)state;
    const int terms[] = {1, 2, 3, 7, 64, 1000, 1 << 16, 1 << 20};
    size_t len[4] = {1, 1, 1, 1};
    float v[4] = {nextafterf(1.0f, 0), -nextafterf(0x1p-100f, 0), FLT_MAX, -FLT_MAX};
    for (size_t t = 0; t < sizeof terms / sizeof *terms; t++) {
        int T = terms[t];
        const float **ch = malloc((size_t)T * sizeof *ch);
        for (int j = 0; j < T; j++)
            ch[j] = v;
        cfx_exact x;
        assert_int_equal(cfx_exact_create(&x, 4, len, 4, NULL), 0);
        cfx_exact_scan(&x, ch, T);
        cfx_exact_accumulate(&x, ch, T, T);
        float out[4];
        assert_int_equal(cfx_exact_finish(&x, T, out), T > 1 ? CFX_EXACT_NONFINITE : CFX_EXACT_OK);
        assert_int_equal(x.bad_segment, T > 1 ? 2 : -1); /* T FLT_MAX overflows float */
        for (int i = 0; i < 4; i++) {
            assert_true(llabs(x.acc[i]) <= (1LL << 62));
            long double want = (long double)T * v[i];
            float wantf = fabsl(want) > FLT_MAX ? copysignf(INFINITY, v[i]) : (float)want;
            if (out[i] != wantf)
                fail_msg("T = %d, value %d: %.9g, want %.9g", T, i, out[i], wantf);
        }
        cfx_exact_free(&x);
        free(ch);
    }
    float a[4] = {1.0f, 3.0f, 1e-30f, 5.0f};
    const float *ch[2] = {a, a};
    float out[4];
    assert_int_equal(sum_one_rank(len, 4, 4, ch, 2, INT_MAX, out), CFX_EXACT_OK);
    for (int i = 0; i < 4; i++)
        assert_true(out[i] == 2 * a[i]);
}

/* Bits below the quantum 2^(E-P) round to nearest, ties to even: with the
 * largest |x| = 1 (E = 1) and one term (P = 62) the quantum is 2^-61. */
static void test_rounding_below_quantum(void **state)
{
    (void)state;
    assert_int_equal(cfx_exact_shift(0x3f800000u, 1), 61);
    assert_int_equal(cfx_exact_shift(0x3f800000u, 5), 58); /* 3 bits of headroom */
    size_t len[1] = {6};
    float a[6] = {1.0f, 0x1.8p-61f, 0x1.4p-60f, 0x1p-62f, -0x1.8p-61f, 0x1.8p-62f};
    float want[6] = {1.0f, 0x1p-60f, 0x1p-60f, 0.0f, -0x1p-60f, 0x1p-61f};
    const float *ch[1] = {a};
    float out[6];
    assert_int_equal(sum_one_rank(len, 1, 6, ch, 1, 1, out), CFX_EXACT_OK);
    for (int i = 0; i < 6; i++)
        if (out[i] != want[i])
            fail_msg("element %d: %a rounds to %a, want %a", i, a[i], out[i], want[i]);
}

/* Denormals only: the sum of denormals is exact in float, and here too. */
static void test_denormals(void **state)
{
    (void)state;
    size_t len[1] = {3};
    float a[3] = {0x1p-149f, 0x1p-130f, -0x1.8p-140f}, b[3] = {0x1p-149f, 0x1p-149f, 0x1p-141f};
    const float *ch[2] = {a, b};
    float out[3];
    assert_int_equal(sum_one_rank(len, 1, 3, ch, 2, 2, out), CFX_EXACT_OK);
    for (int i = 0; i < 3; i++)
        assert_true(out[i] == a[i] + b[i]);
}

/* NaN (also with the sign bit set) and infinities are found, in the right
 * segment, whichever simulated rank holds them; max_terms exceeded. */
static void test_nonfinite_and_too_many(void **state)
{
    (void)state;
    size_t len[3] = {2, 2, 2};
    float bad[4] = {-NAN, NAN, INFINITY, -INFINITY};
    for (int b = 0; b < 4; b++) {
        float a[6] = {1, 2, 3, 4, 5, 6}, c[6] = {1, 2, 3, 4, 5, 6};
        c[3] = bad[b];
        const float *ch[2] = {a, c};
        int owner[2] = {0, 1};
        float out[6];
        assert_int_equal(simulate(len, 3, 6, ch, owner, 2, 2, 2, 0, out), CFX_EXACT_NONFINITE);
        cfx_exact x;
        assert_int_equal(cfx_exact_create(&x, 6, len, 3, NULL), 0);
        cfx_exact_scan(&x, ch, 2);
        assert_int_equal(cfx_exact_first_nonfinite(&x), 1);
        cfx_exact_free(&x);
    }
    float a[6] = {1, 2, 3, 4, 5, 6};
    const float *ch[3] = {a, a, a};
    int owner[3] = {0, 1, 1};
    float out[6];
    assert_int_equal(simulate(len, 3, 6, ch, owner, 3, 2, 2, 0, out), CFX_EXACT_TOO_MANY);
    assert_int_equal(simulate(len, 3, 6, ch, owner, 3, 2, 0, 0, out), CFX_EXACT_TOO_MANY);
}

/* cfx_exact_sum on one MPI rank: the same bits as the steps. */
static void test_mpi_one_rank(void **state)
{
    (void)state;
    enum { K = 9, N = 210 };
    size_t len[3] = {100, 10, 100};
    float **c = adversarial_chunks(K, N, 21);
    float ref[N], out[N];
    assert_int_equal(sum_one_rank(len, 3, N, (const float *const *)c, K, K, ref), CFX_EXACT_OK);
    cfx_exact x;
    assert_int_equal(cfx_exact_create(&x, N, len, 3, NULL), 0);
    assert_int_equal(cfx_exact_sum(&x, (const float *const *)c, K, K, out), CFX_EXACT_OK);
    assert_memory_equal(out, ref, sizeof ref);
    assert_true(x.seconds > 0);
    c[4][105] = NAN;
    assert_int_equal(cfx_exact_sum(&x, (const float *const *)c, K, K, out), CFX_EXACT_NONFINITE);
    assert_int_equal(x.bad_segment, 1);
    assert_int_equal(cfx_exact_sum(&x, NULL, 0, K, out), CFX_EXACT_OK);
    cfx_exact_free(&x);
    free_chunks(c, K);
}

/* The doubles: cancellation, huge and tiny, zeros, counts; non-finite. */
static void test_double(void **state)
{
    (void)state;
    enum { K = 4, N = 5 };
    double v[K][N] = {{1e16, 0, 1e300, 3, 1e-310},
                      {1, 0, -1e300, 4, 1e-310},
                      {-1e16, 0, 1e-300, 5, -3e-310},
                      {0.5, 0, 7, 6, 0}};
    double out[N];
    cfx_exact x = {0};
    assert_int_equal(cfx_exact_sum_double(&x, &v[0][0], K, N, K, out), CFX_EXACT_OK);
    assert_true(out[0] == 1.5); /* 1e16 + 1 - 1e16 + 0.5, exact */
    assert_true(out[1] == 0.0);
    assert_true(out[2] == 0.0);  /* 7 and 1e-300 are below the quantum of 1e300 */
    assert_true(out[3] == 18.0); /* correct counts */
    assert_true(out[4] == v[0][4] + v[1][4] + v[2][4]); /* denormal sums are exact */
    v[2][3] = -INFINITY;
    assert_int_equal(cfx_exact_sum_double(&x, &v[0][0], K, N, K, out), CFX_EXACT_NONFINITE);
    assert_int_equal(x.bad_segment, 3);
    v[2][3] = 5;
    assert_int_equal(cfx_exact_sum_double(&x, &v[0][0], K, N, K - 1, out), CFX_EXACT_TOO_MANY);
    double big[2] = {DBL_MAX, DBL_MAX}; /* the sum overflows double */
    assert_int_equal(cfx_exact_sum_double(&x, big, 2, 1, 2, out), CFX_EXACT_NONFINITE);
    assert_int_equal(x.bad_segment, 0);
    assert_int_equal(cfx_exact_sum_double(&x, NULL, 0, N, K, out), CFX_EXACT_OK);
    for (int i = 0; i < N; i++)
        assert_true(out[i] == 0.0);
    assert_true(x.seconds > 0);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_rejects_bad_segments),
        cmocka_unit_test(test_zeros),
        cmocka_unit_test(test_cancellation_is_exact),
        cmocka_unit_test(test_order_and_grouping_independent),
        cmocka_unit_test(test_precision_bound),
        cmocka_unit_test(test_no_overflow_at_max_terms),
        cmocka_unit_test(test_rounding_below_quantum),
        cmocka_unit_test(test_denormals),
        cmocka_unit_test(test_nonfinite_and_too_many),
        cmocka_unit_test(test_mpi_one_rank),
        cmocka_unit_test(test_double),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    MPI_Finalize();
    return failed;
}
