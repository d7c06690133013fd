/* Crash test of atomic checkpoint writes: starts ckpt_crash_writer (which
 * rewrites last.h5 forever, and best.h5 after every even k), SIGKILLs it at
 * a random moment, and checks that both files still load and each holds one
 * consistent state (every value equal to the same k, never older than
 * before), many times. It also reads the files while the writer is running,
 * and checks after every kill that a copy of last.h5 with one byte of one
 * (random) dataset flipped is reported as damaged, naming that dataset: the
 * fletcher32 checksums are verified on load. SIGKILL keeps the page cache,
 * so this tests the rename protocol, not power loss.
 *
 * usage: test_checkpoint_crash [TRIALS]   (default 60; tools/faults runs hundreds)
 * The last line printed is the summary that tools/faults reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cfx/checkpoint.h" /* defines: cfx_checkpoint_read */
#include "cfx/config.h"     /* defines: cfx_parse_layers, cfx_config_defaults */
#include "cfx/rng.h"        /* defines: cfx_rng */

#include <hdf5.h>

#ifndef CFX_CRASH_WRITER
#error "CFX_CRASH_WRITER must be defined by tests/CMakeLists.txt"
#endif

#define SEED_LAYERS                                                                                \
    "conv2d out=16 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=32 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=64 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=10"
#define DEFAULT_TRIALS 60
/* Kill within 80 ms of the start, or within twice the time the writer takes
 * to its first checkpoint where that is longer. */
#define MAX_DELAY_US 80000

static char tmpdir[256];
static pid_t writer = -1; /* the running writer, killed by teardown if a check fails */
static int trials = DEFAULT_TRIALS;

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cfx_test_crash_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (writer > 0) {
        kill(writer, SIGKILL);
        waitpid(writer, NULL, 0);
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Loads path and checks that it holds one state; returns its k. */
static long load_consistent(const char *path, cfx_model *m, cfx_optim *o)
{
    cfx_train_state st = {0};
    cfx_error err = {{0}};
    for (size_t i = 0; i < m->n_params; i++)
        m->params[i] = o->m[i] = o->v[i] = -1.0f;
    if (cfx_checkpoint_read(path, m, o, &st, &err) != 0)
        fail_msg("checkpoint does not load after a kill: %s", err.msg);
    float k = m->params[0];
    for (size_t i = 0; i < m->n_params; i++)
        if (m->params[i] != k || o->m[i] != k || o->v[i] != k)
            fail_msg("mixed state: params[0] = %g but params/m/v[%zu] = %g/%g/%g", k, i,
                     m->params[i], o->m[i], o->v[i]);
    if (k < 1.0f || o->step != (long)k || st.global_step != (long)k || st.epoch != (int)k)
        fail_msg("mixed state: params %g, optimizer step %ld, global_step %ld, epoch %d", k,
                 o->step, st.global_step, st.epoch);
    return (long)k;
}

/* Copies src to dst with one byte in the middle of the stored data of
 * dataset obj flipped. */
static void copy_damaged(const char *src, const char *dst, const char *obj)
{
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[65536];
    for (size_t n; (n = fread(buf, 1, sizeof buf, in)) > 0;)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
    hid_t f = H5Fopen(dst, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, obj, H5P_DEFAULT);
    hid_t s = H5Dget_space(d);
    haddr_t addr = 0;
    hsize_t size = 0;
    assert_true(H5Dget_chunk_info(d, s, 0, NULL, NULL, &addr, &size) >= 0);
    assert_true(size > 8);
    H5Sclose(s);
    H5Dclose(d);
    H5Fclose(f);
    FILE *fp = fopen(dst, "r+b");
    assert_non_null(fp);
    long at = (long)(addr + size / 2);
    fseek(fp, at, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, at, SEEK_SET);
    fputc(c ^ 0x10, fp);
    assert_int_equal(fclose(fp), 0);
}

/* Damages one random dataset of a copy of path; the load must fail naming it. */
static void check_damage_detected(const char *path, cfx_model *m, cfx_optim *o, cfx_rng *rng)
{
    static const char *const params[] = {"0.weight", "0.bias",  "3.weight", "3.bias",
                                         "6.weight", "6.bias",  "10.weight", "10.bias"};
    static const char *const groups[] = {"/model/%s", "/optimizer/%s/exp_avg",
                                         "/optimizer/%s/exp_avg_sq"};
    char obj[64], copy[600], want[128];
    snprintf(obj, sizeof obj, groups[cfx_rng_below(rng, 3)], params[cfx_rng_below(rng, 8)]);
    snprintf(copy, sizeof copy, "%s/damaged.h5", tmpdir);
    copy_damaged(path, copy, obj);
    cfx_train_state st;
    cfx_error err = {{0}};
    if (cfx_checkpoint_read(copy, m, o, &st, &err) == 0)
        fail_msg("a damaged %s loaded without error", obj);
    snprintf(want, sizeof want, "damaged: checksum mismatch in %s", obj);
    if (!strstr(err.msg, want))
        fail_msg("damage in %s reported as: %s", obj, err.msg);
}

/* Microseconds an uninterrupted writer takes to its first complete last.h5
 * here (a sanitizer build on a slow machine took 160-190 ms); -1 if none in
 * 10 s. The files it wrote are removed. */
static long first_checkpoint_us(const char *path, const char *best)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    writer = pid;
    if (pid == 0) {
        execl(CFX_CRASH_WRITER, "ckpt_crash_writer", path, "1", best, (char *)NULL);
        _exit(127);
    }
    double t0 = cfx_now();
    long us = -1;
    while (us < 0 && cfx_now() - t0 < 10.0) {
        if (file_exists(path))
            us = (long)((cfx_now() - t0) * 1e6);
        sleep_us(500);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    writer = -1;
    char tmp[520];
    const char *files[2] = {path, best};
    for (int i = 0; i < 2; i++) {
        snprintf(tmp, sizeof tmp, "%s.tmp", files[i]);
        remove(files[i]), remove(tmp);
    }
    return us;
}

static void test_kill_during_write(void **state)
{
    (void)state;
    char path[512], tmp[520], best[512], best_tmp[520];
    snprintf(path, sizeof path, "%s/last.h5", tmpdir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(best, sizeof best, "%s/best.h5", tmpdir);
    snprintf(best_tmp, sizeof best_tmp, "%s.tmp", best);
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs = 0;
    cfx_error err = {{0}};
    cfx_model m;
    cfx_config cfg;
    cfx_optim o;
    cfx_config_defaults(&cfg);
    snprintf(cfg.optim_name, sizeof cfg.optim_name, "adam");
    cfg.lr = 1e-3;
    assert_int_equal(cfx_parse_layers(SEED_LAYERS, specs, &n_specs, &err), 0);
    assert_int_equal(cfx_model_create(&m, specs, n_specs, 3, 32, 32, 1, 0, &err), 0);
    assert_int_equal(cfx_optim_create(&o, &cfg, m.n_params, &err), 0);

    long first_us = first_checkpoint_us(path, best);
    if (first_us < 0)
        fail_msg("the writer wrote no checkpoint in 10 s");
    const long window_us = 2 * first_us > MAX_DELAY_US ? 2 * first_us : MAX_DELAY_US;
    cfx_rng rng;
    cfx_rng_seed(&rng, (uint64_t)time(NULL));
    long last = 0, last_best = 0;
    int mid_write = 0, advanced = 0, live_reads = 0, complete = 0, damaged = 0;
    double t0 = cfx_now();
    /* The kill must land inside a write at least once for the test to mean
     * something; on a slow (e.g. sanitizer) build that can take more than
     * the requested trials, so go on (up to 5x) until it has. */
    int t = 0;
    for (; t < trials || (mid_write == 0 && t < 5 * trials); t++) {
        char start[32];
        snprintf(start, sizeof start, "%ld", last + 1);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        writer = pid;
        if (pid == 0) {
            execl(CFX_CRASH_WRITER, "ckpt_crash_writer", path, start, best, (char *)NULL);
            _exit(127);
        }
        long delay = (long)cfx_rng_below(&rng, (uint32_t)window_us);
        sleep_us(delay / 2);
        if (file_exists(path)) { /* a reader racing the writer sees whole files too */
            long k = load_consistent(path, &m, &o);
            if (k < last)
                fail_msg("trial %d: live read found k = %ld, older than %ld", t, k, last);
            live_reads++;
        }
        sleep_us(delay - delay / 2);
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        writer = -1;
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            fail_msg("trial %d: the writer stopped by itself (exit %d)", t,
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        mid_write += file_exists(tmp) || file_exists(best_tmp);
        if (file_exists(best)) {
            long kb = load_consistent(best, &m, &o);
            if (kb % 2 != 0 || kb < last_best)
                fail_msg("trial %d: best.h5 holds k = %ld (after %ld)", t, kb, last_best);
            last_best = kb;
        } else if (last_best != 0)
            fail_msg("trial %d: best.h5 disappeared", t);
        if (!file_exists(path)) {
            if (last != 0)
                fail_msg("trial %d: the checkpoint disappeared", t);
            continue; /* killed before the first checkpoint was complete */
        }
        long k = load_consistent(path, &m, &o);
        if (k < last)
            fail_msg("trial %d: found k = %ld, older than the %ld seen before", t, k, last);
        if (last_best > k)
            fail_msg("trial %d: best.h5 (k = %ld) is newer than last.h5 (k = %ld)", t, last_best,
                     k);
        complete++;
        advanced += k > last;
        last = k;
        check_damage_detected(path, &m, &o, &rng);
        damaged++;
    }
    print_message("%d kills in %.1f s within %ld ms of each start (first checkpoint after %ld "
                  "ms): %d mid-write (temporary file left), %d after new checkpoints, %d live "
                  "reads, last k = %ld, best k = %ld\n",
                  t, cfx_now() - t0, window_us / 1000, first_us / 1000, mid_write, advanced,
                  live_reads, last, last_best);
    print_message("checkpoint crash trials: %d (%d before the first checkpoint), best.h5 and "
                  "last.h5 complete: %d/%d, damaged copies reported as damaged: %d/%d\n",
                  t, t - complete, complete, complete, damaged, complete);
    /* The test means something only if kills hit writes in progress. */
    assert_true(mid_write > 0);
    assert_true(advanced > 0);
    assert_true(last_best > 0);
    cfx_model_free(&m);
    cfx_optim_free(&o);
}

int main(int argc, char **argv)
{
    if (argc > 1 && (trials = atoi(argv[1])) < 1) {
        fprintf(stderr, "usage: %s [TRIALS]\n", argv[0]);
        return 2;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_during_write),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
