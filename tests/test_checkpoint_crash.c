/* Crash test of atomic checkpoint writes: starts ckpt_crash_writer (which
 * rewrites one checkpoint forever), SIGKILLs it at a random moment, and
 * checks that the checkpoint still loads and holds one consistent state
 * (every value equal to the same k, never older than before), many times.
 * It also reads the file while the writer is running. SIGKILL keeps the
 * page cache, so this tests the rename protocol, not power loss. */
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

#ifndef CFX_CRASH_WRITER
#error "CFX_CRASH_WRITER must be defined by tests/CMakeLists.txt"
#endif

#define SEED_LAYERS                                                                                \
    "conv2d out=16 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=32 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=64 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=10"
#define TRIALS 60
#define MAX_DELAY_US 80000 /* kill within 80 ms of the start */

static char tmpdir[256];
static pid_t writer = -1; /* the running writer, killed by teardown if a check fails */

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

static void test_kill_during_write(void **state)
{
    (void)state;
    char path[512], tmp[520];
    snprintf(path, sizeof path, "%s/ckpt.h5", tmpdir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
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

    cfx_rng rng;
    cfx_rng_seed(&rng, (uint64_t)time(NULL));
    long last = 0;
    int mid_write = 0, advanced = 0, live_reads = 0;
    double t0 = cfx_now();
    for (int t = 0; t < TRIALS; t++) {
        char start[32];
        snprintf(start, sizeof start, "%ld", last + 1);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        writer = pid;
        if (pid == 0) {
            execl(CFX_CRASH_WRITER, "ckpt_crash_writer", path, start, (char *)NULL);
            _exit(127);
        }
        long delay = (long)cfx_rng_below(&rng, MAX_DELAY_US);
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
        mid_write += file_exists(tmp);
        if (!file_exists(path)) {
            if (last != 0)
                fail_msg("trial %d: the checkpoint disappeared", t);
            continue; /* killed before the first checkpoint was complete */
        }
        long k = load_consistent(path, &m, &o);
        if (k < last)
            fail_msg("trial %d: found k = %ld, older than the %ld seen before", t, k, last);
        advanced += k > last;
        last = k;
    }
    print_message("%d kills in %.1f s: %d mid-write (temporary file left), %d after new "
                  "checkpoints, %d live reads, last k = %ld\n",
                  TRIALS, cfx_now() - t0, mid_write, advanced, live_reads, last);
    /* The test means something only if kills hit writes in progress. */
    assert_true(mid_write > 0);
    assert_true(advanced > 0);
    cfx_model_free(&m);
    cfx_optim_free(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_during_write),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
