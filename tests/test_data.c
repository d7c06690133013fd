/* Unit tests of the CIFAR-10 reader, the train/validation split and batch
 * assembly (src/data): good and bad synthetic batch files written to a
 * temporary directory, normalisation, crop + flip augmentation and, when the
 * real data set is present, its image and class counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfx/data.h"  /* defines: cfx_dataset_open, cfx_split_make, cfx_batch_fill */
#include "cfx/nn.h"    /* defines: cfx_model, cfx_parse_layers */
#include "cfx/train.h" /* defines: cfx_evaluate_views */

#define S CFX_IMAGE_SIZE
#define HW (CFX_IMAGE_SIZE * CFX_IMAGE_SIZE)
#define P CFX_CROP_PADDING

static char tmpdir[256];

/* Fails the test unless msg contains needle, showing both. */
#define assert_has(msg, needle)                                                                    \
    do {                                                                                           \
        if (!strstr((msg), (needle)))                                                              \
            fail_msg("error message \"%s\" does not contain \"%s\"", (msg), (needle));             \
    } while (0)

/* ---- temporary files ---------------------------------------------------- */

static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                    continue;
                char child[1024];
                snprintf(child, sizeof child, "%s/%s", path, e->d_name);
                remove_tree(child);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cfx_test_data_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    remove_tree(tmpdir);
    return 0;
}

/* tmpdir/name into buf. */
static const char *tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
    return buf;
}

static void write_file(const char *path, const void *bytes, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len)
        assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* The pixel byte of record i, channel c, position p in the synthetic files. */
static uint8_t pixel_value(int file_tag, int i, int c, int p)
{
    uint32_t h = (uint32_t)(file_tag * 7919 + i * 104729 + c * 1299709 + p * 2654435761u);
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    return (uint8_t)h;
}

/* n records with labels (i + file_tag) % 10 and pseudo-random pixels. */
static uint8_t *make_records(int n, int file_tag)
{
    uint8_t *buf = malloc((size_t)n * CFX_RECORD_BYTES);
    assert_non_null(buf);
    for (int i = 0; i < n; i++) {
        uint8_t *r = buf + (size_t)i * CFX_RECORD_BYTES;
        r[0] = (uint8_t)((i + file_tag) % CFX_NUM_CLASSES);
        for (int c = 0; c < CFX_IMAGE_CHANNELS; c++)
            for (int p = 0; p < HW; p++)
                r[1 + c * HW + p] = pixel_value(file_tag, i, c, p);
    }
    return buf;
}

static void write_records(const char *path, int n, int file_tag)
{
    uint8_t *buf = make_records(n, file_tag);
    write_file(path, buf, (size_t)n * CFX_RECORD_BYTES);
    free(buf);
}

/* A file of n_records all-zero records (label 0), created sparse so even
 * full-size 10,000-record files are cheap; then record `rec` gets `label`
 * (rec < 0: none). */
static void write_sparse(const char *path, long n_records, long rec, uint8_t label)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)n_records * CFX_RECORD_BYTES), 0);
    if (rec >= 0)
        assert_int_equal(pwrite(fd, &label, 1, (off_t)rec * CFX_RECORD_BYTES), 1);
    assert_int_equal(close(fd), 0);
}

/* Opens one file, expects failure; the message must name the file. */
static void expect_open_fails(const char *path, long records_per_file, cfx_error *err)
{
    cfx_dataset ds;
    const char *paths[1] = {path};
    memset(err->msg, 0, sizeof err->msg);
    assert_int_equal(cfx_dataset_open(&ds, paths, 1, records_per_file, err), -1);
    assert_has(err->msg, path);
    assert_int_equal(ds.n, 0);
    assert_null(ds.records);
    assert_int_equal(ds.n_maps, 0);
}

/* ---- reader: good files -------------------------------------------------- */

static void test_open_reads_back_exactly(void **state)
{
    (void)state;
    char p1[512], p2[512];
    tmp_path(p1, sizeof p1, "good_a.bin");
    tmp_path(p2, sizeof p2, "good_b.bin");
    write_records(p1, 3, 1);
    write_records(p2, 5, 2);

    cfx_dataset ds;
    cfx_error err;
    const char *paths[2] = {p1, p2};
    assert_int_equal(cfx_dataset_open(&ds, paths, 2, 0, &err), 0);
    assert_int_equal(ds.n, 8);
    assert_int_equal(ds.n_maps, 2);
    for (int k = 0; k < ds.n; k++) {
        int tag = k < 3 ? 1 : 2, i = k < 3 ? k : k - 3;
        assert_int_equal(cfx_dataset_label(&ds, k), (i + tag) % CFX_NUM_CLASSES);
        const uint8_t *px = cfx_dataset_pixels(&ds, k);
        for (int c = 0; c < CFX_IMAGE_CHANNELS; c++)
            for (int p = 0; p < HW; p++)
                if (px[c * HW + p] != pixel_value(tag, i, c, p))
                    fail_msg("image %d channel %d pixel %d: %u, expected %u", k, c, p,
                             px[c * HW + p], pixel_value(tag, i, c, p));
    }
    cfx_dataset_close(&ds);
    assert_int_equal(ds.n, 0);
    assert_null(ds.records);

    /* An exact records_per_file is accepted, every label 0..9 is valid. */
    const char *one[1] = {p2};
    assert_int_equal(cfx_dataset_open(&ds, one, 1, 5, &err), 0);
    assert_int_equal(ds.n, 5);
    cfx_dataset_close(&ds);

    char p3[512];
    tmp_path(p3, sizeof p3, "all_labels.bin");
    write_records(p3, 10, 0);
    const char *three[1] = {p3};
    assert_int_equal(cfx_dataset_open(&ds, three, 1, 0, &err), 0);
    for (int k = 0; k < 10; k++)
        assert_int_equal(cfx_dataset_label(&ds, k), k);
    cfx_dataset_close(&ds);
}

/* ---- reader: bad files ------------------------------------------------------ */

static void test_open_missing_file(void **state)
{
    (void)state;
    char p[512];
    cfx_error err;
    expect_open_fails(tmp_path(p, sizeof p, "no_such_file.bin"), 0, &err);
    assert_has(err.msg, "cannot open");
    assert_has(err.msg, "No such file");
}

static void test_open_empty_file(void **state)
{
    (void)state;
    char p[512];
    cfx_error err;
    tmp_path(p, sizeof p, "empty.bin");
    write_file(p, "", 0);
    expect_open_fails(p, 0, &err);
    assert_has(err.msg, "size 0 bytes");
    expect_open_fails(p, CFX_RECORDS_PER_FILE, &err);
    assert_has(err.msg, "size 0 bytes");
}

static void test_open_partial_record(void **state)
{
    (void)state;
    char p[512];
    cfx_error err;
    tmp_path(p, sizeof p, "partial.bin");
    uint8_t *buf = make_records(3, 0);
    /* Two records and 100 bytes of a third. */
    write_file(p, buf, 2 * CFX_RECORD_BYTES + 100);
    expect_open_fails(p, 0, &err);
    assert_has(err.msg, "6246 bytes");
    assert_has(err.msg, "not a whole number of 3073-byte records");
    /* A single byte short of three records. */
    write_file(p, buf, 3 * CFX_RECORD_BYTES - 1);
    expect_open_fails(p, 3, &err);
    assert_has(err.msg, "9218 bytes");
    free(buf);
}

static void test_open_bad_label(void **state)
{
    (void)state;
    static const uint8_t bad[] = {10, 11, 128, 255};
    char p[512];
    cfx_error err;
    tmp_path(p, sizeof p, "bad_label.bin");
    for (size_t b = 0; b < sizeof bad; b++) {
        uint8_t *buf = make_records(4, 0);
        buf[2 * CFX_RECORD_BYTES] = bad[b]; /* record 2 */
        write_file(p, buf, 4 * CFX_RECORD_BYTES);
        free(buf);
        expect_open_fails(p, 0, &err);
        char want[64];
        snprintf(want, sizeof want, "record 2 has label %u", bad[b]);
        assert_has(err.msg, want);
    }
    /* The last record is checked too. */
    uint8_t *buf = make_records(4, 0);
    buf[3 * CFX_RECORD_BYTES] = 10;
    write_file(p, buf, 4 * CFX_RECORD_BYTES);
    free(buf);
    expect_open_fails(p, 4, &err);
    assert_has(err.msg, "record 3 has label 10");
}

static void test_open_wrong_record_count(void **state)
{
    (void)state;
    char p[512];
    cfx_error err;
    tmp_path(p, sizeof p, "count.bin");
    write_records(p, 4, 0);
    expect_open_fails(p, 5, &err);
    assert_has(err.msg, "holds 4 records, expected 5");
    expect_open_fails(p, 3, &err);
    assert_has(err.msg, "holds 4 records, expected 3");

    write_sparse(p, CFX_RECORDS_PER_FILE - 1, -1, 0);
    expect_open_fails(p, CFX_RECORDS_PER_FILE, &err);
    assert_has(err.msg, "holds 9999 records, expected 10000");
    unlink(p);
}

static void test_open_directory(void **state)
{
    (void)state;
    char p[512];
    cfx_error err;
    tmp_path(p, sizeof p, "a_directory.bin");
    assert_int_equal(mkdir(p, 0755), 0);
    expect_open_fails(p, 0, &err);
    assert_has(err.msg, "not a regular file");
    rmdir(p);
}

static void test_open_second_file_bad(void **state)
{
    (void)state;
    char good[512], bad[512];
    tmp_path(good, sizeof good, "second_good.bin");
    tmp_path(bad, sizeof bad, "second_bad.bin");
    write_records(good, 2, 0);
    write_file(bad, "xyz", 3);
    cfx_dataset ds;
    cfx_error err;
    const char *paths[2] = {good, bad};
    assert_int_equal(cfx_dataset_open(&ds, paths, 2, 0, &err), -1);
    assert_has(err.msg, bad);
    assert_null(strstr(err.msg, good));
    assert_int_equal(ds.n_maps, 0);
    assert_null(ds.records);
}

static void test_open_file_count_limits(void **state)
{
    (void)state;
    char p[512];
    tmp_path(p, sizeof p, "limits.bin");
    write_records(p, 1, 0);
    const char *paths[CFX_MAX_DATA_FILES + 1];
    for (int i = 0; i <= CFX_MAX_DATA_FILES; i++)
        paths[i] = p;
    cfx_dataset ds;
    cfx_error err;
    assert_int_equal(cfx_dataset_open(&ds, paths, 0, 0, &err), -1);
    assert_has(err.msg, "0 files");
    assert_int_equal(cfx_dataset_open(&ds, paths, CFX_MAX_DATA_FILES + 1, 0, &err), -1);
    assert_int_equal(cfx_dataset_open(&ds, paths, CFX_MAX_DATA_FILES, 0, &err), 0);
    assert_int_equal(ds.n, CFX_MAX_DATA_FILES);
    cfx_dataset_close(&ds);
}

/* ---- the train/test folder readers (full-size, sparse files) ----------- */

static const char *const TRAIN_NAMES[5] = {"data_batch_1.bin", "data_batch_2.bin",
                                           "data_batch_3.bin", "data_batch_4.bin",
                                           "data_batch_5.bin"};

static void test_cifar10_folder(void **state)
{
    (void)state;
    char dir[512], p[1024];
    tmp_path(dir, sizeof dir, "cifar");
    assert_int_equal(mkdir(dir, 0755), 0);
    cfx_dataset ds;
    cfx_error err;

    /* Nothing there yet: the first file is named. */
    assert_int_equal(cfx_cifar10_open_train(&ds, dir, &err), -1);
    assert_has(err.msg, "data_batch_1.bin");
    assert_has(err.msg, "cannot open");
    assert_int_equal(cfx_cifar10_open_test(&ds, dir, &err), -1);
    assert_has(err.msg, "test_batch.bin");

    /* File f has label f + 1 in its record 1234; the rest are label 0. */
    for (int f = 0; f < 5; f++) {
        snprintf(p, sizeof p, "%s/%s", dir, TRAIN_NAMES[f]);
        write_sparse(p, CFX_RECORDS_PER_FILE, 1234, (uint8_t)(f + 1));
    }
    assert_int_equal(cfx_cifar10_open_train(&ds, dir, &err), 0);
    assert_int_equal(ds.n, 5 * CFX_RECORDS_PER_FILE);
    for (int f = 0; f < 5; f++) {
        assert_int_equal(cfx_dataset_label(&ds, f * CFX_RECORDS_PER_FILE + 1234), f + 1);
        assert_int_equal(cfx_dataset_label(&ds, f * CFX_RECORDS_PER_FILE + 1233), 0);
    }
    cfx_dataset_close(&ds);

    /* One file missing, short, or with a bad label: that file is named. */
    snprintf(p, sizeof p, "%s/%s", dir, TRAIN_NAMES[2]);
    unlink(p);
    assert_int_equal(cfx_cifar10_open_train(&ds, dir, &err), -1);
    assert_has(err.msg, p);
    assert_has(err.msg, "cannot open");
    write_sparse(p, CFX_RECORDS_PER_FILE - 1, -1, 0);
    assert_int_equal(cfx_cifar10_open_train(&ds, dir, &err), -1);
    assert_has(err.msg, p);
    assert_has(err.msg, "holds 9999 records, expected 10000");
    write_sparse(p, CFX_RECORDS_PER_FILE, CFX_RECORDS_PER_FILE - 1, 255);
    assert_int_equal(cfx_cifar10_open_train(&ds, dir, &err), -1);
    assert_has(err.msg, p);
    assert_has(err.msg, "record 9999 has label 255");
    write_sparse(p, CFX_RECORDS_PER_FILE, 0, 9);
    assert_int_equal(cfx_cifar10_open_train(&ds, dir, &err), 0);
    assert_int_equal(cfx_dataset_label(&ds, 2 * CFX_RECORDS_PER_FILE), 9);
    cfx_dataset_close(&ds);

    /* The test file. */
    snprintf(p, sizeof p, "%s/test_batch.bin", dir);
    write_sparse(p, CFX_RECORDS_PER_FILE + 1, -1, 0);
    assert_int_equal(cfx_cifar10_open_test(&ds, dir, &err), -1);
    assert_has(err.msg, p);
    assert_has(err.msg, "holds 10001 records, expected 10000");
    write_sparse(p, CFX_RECORDS_PER_FILE, 5000, 10);
    assert_int_equal(cfx_cifar10_open_test(&ds, dir, &err), -1);
    assert_has(err.msg, p);
    assert_has(err.msg, "record 5000 has label 10");
    write_sparse(p, CFX_RECORDS_PER_FILE, 9999, 7);
    assert_int_equal(cfx_cifar10_open_test(&ds, dir, &err), 0);
    assert_int_equal(ds.n, CFX_RECORDS_PER_FILE);
    assert_int_equal(cfx_dataset_label(&ds, 9999), 7);
    cfx_dataset_close(&ds);

    remove_tree(dir);
}

/* ---- split ------------------------------------------------------------------ */

static void test_split_partition(void **state)
{
    (void)state;
    cfx_split sp;
    cfx_error err;
    assert_int_equal(cfx_split_make(&sp, 50000, 5000, 42, 0, 0, &err), 0);
    assert_int_equal(sp.n_train, 45000);
    assert_int_equal(sp.n_val, 5000);
    unsigned char *seen = calloc(50000, 1);
    assert_non_null(seen);
    int identity = 1;
    for (int i = 0; i < sp.n_train; i++) {
        assert_in_range(sp.train[i], 0, 49999);
        assert_int_equal(seen[sp.train[i]]++, 0);
        identity &= sp.train[i] == i;
    }
    for (int i = 0; i < sp.n_val; i++) {
        assert_in_range(sp.val[i], 0, 49999);
        assert_int_equal(seen[sp.val[i]]++, 0); /* disjoint from train */
    }
    for (int i = 0; i < 50000; i++)
        assert_int_equal(seen[i], 1); /* every index once */
    assert_false(identity);           /* actually shuffled */
    free(seen);
    cfx_split_free(&sp);
    assert_null(sp.train);
    assert_null(sp.val);
}

static void test_split_seeded(void **state)
{
    (void)state;
    cfx_split a, b, c;
    cfx_error err;
    assert_int_equal(cfx_split_make(&a, 50000, 5000, 42, 0, 0, &err), 0);
    assert_int_equal(cfx_split_make(&b, 50000, 5000, 42, 0, 0, &err), 0);
    assert_int_equal(cfx_split_make(&c, 50000, 5000, 43, 0, 0, &err), 0);
    assert_memory_equal(a.train, b.train, 45000 * sizeof(int));
    assert_memory_equal(a.val, b.val, 5000 * sizeof(int));
    int same_val = 0;
    for (int i = 0; i < 5000; i++)
        same_val += a.val[i] == c.val[i];
    assert_true(same_val < 100); /* another seed: another permutation */
    assert_memory_not_equal(a.train, c.train, 45000 * sizeof(int));
    cfx_split_free(&a);
    cfx_split_free(&b);
    cfx_split_free(&c);
}

static void test_split_limits(void **state)
{
    (void)state;
    cfx_split full, lim;
    cfx_error err;
    assert_int_equal(cfx_split_make(&full, 50000, 5000, 7, 0, 0, &err), 0);
    /* Limits keep the first K of each part, so the parts stay disjoint. */
    assert_int_equal(cfx_split_make(&lim, 50000, 5000, 7, 1000, 100, &err), 0);
    assert_int_equal(lim.n_train, 1000);
    assert_int_equal(lim.n_val, 100);
    assert_memory_equal(lim.train, full.train, 1000 * sizeof(int));
    assert_memory_equal(lim.val, full.val, 100 * sizeof(int));
    cfx_split_free(&lim);
    /* Limits at or above the part size keep everything. */
    assert_int_equal(cfx_split_make(&lim, 50000, 5000, 7, 45000, 5001, &err), 0);
    assert_int_equal(lim.n_train, 45000);
    assert_int_equal(lim.n_val, 5000);
    cfx_split_free(&lim);
    assert_int_equal(cfx_split_make(&lim, 50000, 5000, 7, 1, 1, &err), 0);
    assert_int_equal(lim.n_train, 1);
    assert_int_equal(lim.n_val, 1);
    assert_int_equal(lim.train[0], full.train[0]);
    assert_int_equal(lim.val[0], full.val[0]);
    cfx_split_free(&lim);
    /* Another val_size. */
    assert_int_equal(cfx_split_make(&lim, 50000, 10000, 7, 0, 0, &err), 0);
    assert_int_equal(lim.n_train, 40000);
    assert_int_equal(lim.n_val, 10000);
    cfx_split_free(&lim);
    cfx_split_free(&full);
    /* val_size must leave both parts non-empty. */
    assert_int_equal(cfx_split_make(&lim, 50000, 0, 7, 0, 0, &err), -1);
    assert_has(err.msg, "data.val_size");
    assert_int_equal(cfx_split_make(&lim, 50000, 50000, 7, 0, 0, &err), -1);
    assert_has(err.msg, "data.val_size");
    assert_int_equal(cfx_split_make(&lim, 50000, -1, 7, 0, 0, &err), -1);
    assert_has(err.msg, "data.val_size");
}

/* ---- batches ---------------------------------------------------------------- */

static float normalised(int c, uint8_t v)
{
    return ((float)v / 255.0f - CFX_CIFAR10_MEAN[c]) / CFX_CIFAR10_STD[c];
}

/* A small in-memory data set of n synthetic images (file "batch_<n>.bin"). */
static void open_small(cfx_dataset *ds, int n, int tag)
{
    char p[512], name[64];
    snprintf(name, sizeof name, "batch_%d_%d.bin", n, tag);
    tmp_path(p, sizeof p, name);
    write_records(p, n, tag);
    cfx_error err;
    const char *paths[1] = {p};
    assert_int_equal(cfx_dataset_open(ds, paths, 1, 0, &err), 0);
}

static void assert_close(float got, float want, const char *what, int i, int c, int y, int x)
{
    if (fabsf(got - want) > 1e-5f)
        fail_msg("%s: image %d channel %d (%d,%d): %.7f, expected %.7f", what, i, c, y, x,
                 (double)got, (double)want);
}

static void test_batch_plain(void **state)
{
    (void)state;
    cfx_dataset ds;
    open_small(&ds, 6, 3);
    const int idx[4] = {4, 0, 5, 2};
    const int n = 4;
    float *out = malloc(sizeof(float) * CFX_IMAGE_PIXELS * n);
    int labels[4];
    cfx_augment off = {.enabled = 0, .seed = 1, .epoch = 0, .padding = CFX_CROP_PADDING};
    for (int pass = 0; pass < 2; pass++) {
        memset(out, 0xff, sizeof(float) * CFX_IMAGE_PIXELS * n); /* NaN everywhere */
        cfx_batch_fill(out, labels, &ds, idx, n, pass ? &off : NULL);
        for (int i = 0; i < n; i++) {
            assert_int_equal(labels[i], cfx_dataset_label(&ds, idx[i]));
            const uint8_t *px = cfx_dataset_pixels(&ds, idx[i]);
            for (int c = 0; c < CFX_IMAGE_CHANNELS; c++)
                for (int y = 0; y < S; y++)
                    for (int x = 0; x < S; x++) {
                        /* layout [C][N][H][W] */
                        float got = out[((size_t)c * n + i) * HW + y * S + x];
                        assert_close(got, normalised(c, px[c * HW + y * S + x]), "plain", i, c, y,
                                     x);
                    }
        }
    }
    /* Byte values 0 and 255 map to the ends of the normalised range. */
    assert_true(fabsf(normalised(0, 0) - (-0.4914f / 0.2470f)) < 1e-6f);
    assert_true(fabsf(normalised(2, 255) - ((1.0f - 0.4465f) / 0.2616f)) < 1e-6f);
    free(out);
    cfx_dataset_close(&ds);
}

/* Fixed views (test-time augmentation): a pixel of the view against the
 * source pixel it should show, reflecting at the border like torch's
 * reflect padding (index -1 -> 1, 32 -> 30) or zero-filled. */
static int reflect_index(int s) { return s < 0 ? -s : s >= S ? 2 * (S - 1) - s : s; }

static void test_batch_views(void **state)
{
    (void)state;
    cfx_dataset ds;
    open_small(&ds, 3, 5);
    const int idx[2] = {2, 0}, n = 2;
    float *out = malloc(sizeof(float) * CFX_IMAGE_PIXELS * n);
    int labels[2];
    const cfx_view views[] = {
        {0, 0, 1, 0, 1}, {1, 1, 0, 1, 1}, {-1, -1, 1, 1, 1}, {2, -3, 0, 0, 1}};
    for (size_t v = 0; v < sizeof views / sizeof views[0]; v++) {
        const cfx_view *w = &views[v];
        cfx_batch_fill_view(out, labels, &ds, idx, n, w);
        for (int i = 0; i < n; i++) {
            const uint8_t *px = cfx_dataset_pixels(&ds, idx[i]);
            for (int c = 0; c < CFX_IMAGE_CHANNELS; c++)
                for (int y = 0; y < S; y++)
                    for (int x = 0; x < S; x++) {
                        int sy = y + w->dy, sx = (w->flip ? S - 1 - x : x) + w->dx;
                        int in = sy >= 0 && sy < S && sx >= 0 && sx < S;
                        float want = normalised(c, 0);
                        if (in || w->reflect)
                            want = normalised(c, px[c * HW + reflect_index(sy) * S +
                                                     reflect_index(sx)]);
                        assert_close(out[((size_t)c * n + i) * HW + y * S + x], want, "view", i,
                                     c, y, x);
                    }
        }
    }
    cfx_view tta[CFX_MAX_VIEWS];
    assert_int_equal(cfx_tta_views("none", tta), 1);
    assert_int_equal(cfx_tta_views("flip", tta), 2);
    assert_true(tta[1].flip && !tta[0].flip);
    assert_int_equal(cfx_tta_views("flip_translate", tta), 6);
    assert_int_equal(cfx_tta_views("crop", tta), 0);
    free(out);
    cfx_dataset_close(&ds);
}

/* flip_translate weighs views as airbench's TTA does: (mirror(x) +
 * (mirror(up-left) + mirror(down-right)) / 2) / 2 with mirror(v) the mean
 * of v and its flip. cfx_evaluate_views's probabilities against that sum
 * of the views' logits, on a linear model. */
static void test_tta_weights(void **state)
{
    (void)state;
    const float airbench[6] = {0.25f, 0.25f, 0.125f, 0.125f, 0.125f, 0.125f};
    cfx_view tta[CFX_MAX_VIEWS];
    assert_int_equal(cfx_tta_views("flip_translate", tta), 6);
    for (int v = 0; v < 6; v++) /* unshifted pair first, each pair plain then flipped */
        assert_true(tta[v].weight == airbench[v] && tta[v].flip == v % 2 &&
                    tta[v].dy == (v < 2   ? 0
                                  : v < 4 ? -1
                                          : 1));
    cfx_tta_views("flip", tta);
    assert_true(tta[0].weight == 0.5f && tta[1].weight == 0.5f);
    cfx_tta_views("none", tta);
    assert_true(tta[0].weight == 1.0f);

    enum { N = 3, K = 10 };
    cfx_dataset ds;
    open_small(&ds, N, 6);
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs = 0, idx[N] = {2, 0, 1}, labels[N];
    cfx_error err;
    cfx_model m;
    assert_int_equal(cfx_parse_layers("flatten; linear out=10", specs, &n_specs, &err), 0);
    assert_int_equal(cfx_model_create(&m, specs, n_specs, 3, S, S, N, 0, &err), 0);
    for (size_t j = 0; j < m.n_params; j++) /* weights that tell the views apart */
        m.params[j] = (float)((j * 2654435761u) % 1001) / 500.0f - 1.0f;
    double want[N][K] = {{0}}, want_loss = 0.0;
    cfx_tta_views("flip_translate", tta);
    for (int v = 0; v < 6; v++) {
        cfx_batch_fill_view(m.acts[0], labels, &ds, idx, N, &tta[v]);
        const float *logits = cfx_model_forward(&m, N);
        for (int i = 0; i < N; i++)
            for (int k = 0; k < K; k++)
                want[i][k] += airbench[v] * logits[i * K + k];
    }
    float probs[N * K];
    cfx_eval_result res;
    cfx_evaluate_views(&m, &ds, idx, N, tta, 6, &res, NULL, probs);
    for (int i = 0; i < N; i++) {
        double top = want[i][0], z = 0.0;
        for (int k = 1; k < K; k++)
            top = want[i][k] > top ? want[i][k] : top;
        for (int k = 0; k < K; k++)
            z += exp(want[i][k] - top);
        for (int k = 0; k < K; k++)
            assert_true(fabs(probs[i * K + k] - exp(want[i][k] - top) / z) < 1e-5);
        want_loss += (log(z) + top - want[i][labels[i]]) / N;
    }
    assert_true(fabs(res.loss - want_loss) < 1e-4 * (1.0 + want_loss));
    cfx_model_free(&m);
    cfx_dataset_close(&ds);
}

/* Alternating flips (random in epoch 1, then each image flipped in
 * alternate epochs), no flips, the padding range, and reflection: an
 * augmented image equals the fixed view of its draw. */
static void test_augment_modes(void **state)
{
    (void)state;
    cfx_augment alt = {.enabled = 1, .seed = 7, .padding = 2, .flip = CFX_FLIP_ALTERNATING};
    cfx_augment rnd = {.enabled = 1, .seed = 7, .epoch = 1, .padding = 2};
    int flips_epoch1 = 0;
    for (int idx = 0; idx < 200; idx++) {
        int dy, dx, f1, f, r;
        rnd.epoch = 1;
        cfx_augment_draw(&rnd, idx, &dy, &dx, &r);
        alt.epoch = 1;
        cfx_augment_draw(&alt, idx, &dy, &dx, &f1);
        assert_int_equal(f1, r); /* epoch 1: the random flip */
        flips_epoch1 += f1;
        for (int e = 2; e <= 5; e++) {
            alt.epoch = e;
            cfx_augment_draw(&alt, idx, &dy, &dx, &f);
            assert_int_equal(f, f1 ^ ((e - 1) & 1));
            assert_true(dy >= 0 && dy <= 4 && dx >= 0 && dx <= 4);
        }
    }
    assert_true(flips_epoch1 > 70 && flips_epoch1 < 130);
    cfx_augment none = {.enabled = 1, .seed = 7, .epoch = 3, .padding = 2, .flip = CFX_FLIP_NONE};
    for (int idx = 0; idx < 50; idx++) {
        int dy, dx, f;
        cfx_augment_draw(&none, idx, &dy, &dx, &f);
        assert_int_equal(f, 0);
    }
    /* reflect padding: the batch is the view of each image's draw */
    cfx_dataset ds;
    open_small(&ds, 4, 6);
    const int idx[3] = {3, 1, 2};
    float *out = malloc(sizeof(float) * CFX_IMAGE_PIXELS * 3);
    float *one = malloc(sizeof(float) * CFX_IMAGE_PIXELS);
    int labels[3];
    cfx_augment refl = {.enabled = 1, .seed = 9, .epoch = 2, .padding = 2, .reflect = 1};
    cfx_batch_fill(out, labels, &ds, idx, 3, &refl);
    for (int i = 0; i < 3; i++) {
        int dy, dx, f;
        cfx_augment_draw(&refl, idx[i], &dy, &dx, &f);
        cfx_view v = {dy - 2, dx - 2, f, 1, 1};
        cfx_batch_fill_view(one, labels, &ds, &idx[i], 1, &v);
        for (int c = 0; c < CFX_IMAGE_CHANNELS; c++)
            assert_memory_equal(out + ((size_t)c * 3 + i) * HW, one + (size_t)c * HW,
                                HW * sizeof(float));
    }
    free(out);
    free(one);
    cfx_dataset_close(&ds);
}

/* The augmented image built by hand: pad 4 with black, crop at (dy, dx),
 * then flip left-right. */
static void expected_augmented(float *dst, const uint8_t *px, int c, int dy, int dx, int flip)
{
    enum { PS = S + 2 * P };
    float padded[PS][PS];
    for (int y = 0; y < PS; y++)
        for (int x = 0; x < PS; x++)
            padded[y][x] = normalised(c, 0); /* zero = black pixel */
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            padded[y + P][x + P] = normalised(c, px[c * HW + y * S + x]);
    float crop[S][S];
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            crop[y][x] = padded[y + dy][x + dx];
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            dst[y * S + x] = flip ? crop[y][S - 1 - x] : crop[y][x];
}

static void test_batch_augmented(void **state)
{
    (void)state;
    enum { N_IMG = 160 };
    cfx_dataset ds;
    open_small(&ds, N_IMG, 5);
    int idx[N_IMG];
    for (int i = 0; i < N_IMG; i++)
        idx[i] = (i * 37 + 11) % N_IMG; /* batch position != data set index */
    float *out = malloc(sizeof(float) * CFX_IMAGE_PIXELS * N_IMG);
    int *labels = malloc(sizeof(int) * N_IMG);
    cfx_augment aug = {.enabled = 1, .seed = 2024, .epoch = 3, .padding = CFX_CROP_PADDING};
    cfx_batch_fill(out, labels, &ds, idx, N_IMG, &aug);

    int seen_dy[9] = {0}, seen_dx[9] = {0}, seen_flip[2] = {0};
    float want[HW];
    for (int i = 0; i < N_IMG; i++) {
        int dy, dx, flip;
        cfx_augment_draw(&aug, idx[i], &dy, &dx, &flip);
        seen_dy[dy]++;
        seen_dx[dx]++;
        seen_flip[flip]++;
        assert_int_equal(labels[i], cfx_dataset_label(&ds, idx[i]));
        const uint8_t *px = cfx_dataset_pixels(&ds, idx[i]);
        for (int c = 0; c < CFX_IMAGE_CHANNELS; c++) {
            expected_augmented(want, px, c, dy, dx, flip);
            const float *got = out + ((size_t)c * N_IMG + i) * HW;
            for (int p = 0; p < HW; p++)
                assert_close(got[p], want[p], "augmented", i, c, p / S, p % S);
        }
    }
    /* The batch exercised the corner cases: both flips, both extreme offsets. */
    assert_true(seen_flip[0] > 0 && seen_flip[1] > 0);
    assert_true(seen_dy[0] > 0 && seen_dy[8] > 0 && seen_dx[0] > 0 && seen_dx[8] > 0);

    /* An image's augmentation depends on its index, not on the batch around it. */
    float single[CFX_IMAGE_PIXELS];
    int label;
    cfx_batch_fill(single, &label, &ds, &idx[17], 1, &aug);
    for (int c = 0; c < CFX_IMAGE_CHANNELS; c++)
        assert_memory_equal(single + c * HW, out + ((size_t)c * N_IMG + 17) * HW,
                            sizeof(float) * HW);

    /* Same (seed, epoch): identical batch. */
    float *again = malloc(sizeof(float) * CFX_IMAGE_PIXELS * N_IMG);
    cfx_batch_fill(again, labels, &ds, idx, N_IMG, &aug);
    assert_memory_equal(again, out, sizeof(float) * CFX_IMAGE_PIXELS * N_IMG);
    /* Another epoch: a different batch. */
    aug.epoch = 4;
    cfx_batch_fill(again, labels, &ds, idx, N_IMG, &aug);
    assert_memory_not_equal(again, out, sizeof(float) * CFX_IMAGE_PIXELS * N_IMG);

    free(again);
    free(labels);
    free(out);
    cfx_dataset_close(&ds);
}

/* A fixed crop/flip checked on one known image, independent of the draw. */
static void test_batch_augmented_known_image(void **state)
{
    (void)state;
    /* Find indices whose draws are (0,0,no flip), (8,8,flip) and centre. */
    cfx_augment aug = {.enabled = 1, .seed = 99, .epoch = 0, .padding = CFX_CROP_PADDING};
    int want_dy[3] = {0, 8, 4}, want_dx[3] = {0, 8, 4}, want_flip[3] = {0, 1, 1};
    for (int k = 0; k < 3; k++) {
        int index = -1;
        for (int i = 0; i < 100000 && index < 0; i++) {
            int dy, dx, flip;
            cfx_augment_draw(&aug, i, &dy, &dx, &flip);
            if (dy == want_dy[k] && dx == want_dx[k] && flip == want_flip[k])
                index = i;
        }
        assert_true(index >= 0);
        /* A data set whose image `index` has pixel value 10 + y at row y, col x
         * in channel 0 only where x == 0 (a left edge stripe), else 200. */
        cfx_dataset ds;
        memset(&ds, 0, sizeof ds);
        ds.n = index + 1;
        uint8_t *rec = calloc(CFX_RECORD_BYTES, 1);
        const uint8_t **records = malloc(sizeof(uint8_t *) * (size_t)ds.n);
        for (int i = 0; i < ds.n; i++)
            records[i] = rec;
        ds.records = records;
        rec[0] = 4;
        for (int c = 0; c < CFX_IMAGE_CHANNELS; c++)
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++)
                    rec[1 + c * HW + y * S + x] = (uint8_t)(x == 0 ? 10 + y : 200);
        float out[CFX_IMAGE_PIXELS];
        int label;
        cfx_batch_fill(out, &label, &ds, &index, 1, &aug);
        assert_int_equal(label, 4);
        for (int c = 0; c < CFX_IMAGE_CHANNELS; c++) {
            const float *o = out + c * HW;
            float black = normalised(c, 0);
            if (k == 0) {
                /* Crop at (0,0): 4 rows and 4 cols of black at top-left, the
                 * stripe at column 4, image row 0 at output row 4. */
                assert_close(o[0], black, "k0", 0, c, 0, 0);
                assert_close(o[3 * S + 31], black, "k0", 0, c, 3, 31);
                assert_close(o[4 * S + 3], black, "k0", 0, c, 4, 3);
                assert_close(o[4 * S + 4], normalised(c, 10), "k0", 0, c, 4, 4);
                assert_close(o[31 * S + 4], normalised(c, 10 + 27), "k0", 0, c, 31, 4);
                assert_close(o[31 * S + 31], normalised(c, 200), "k0", 0, c, 31, 31);
            } else if (k == 1) {
                /* Crop at (8,8) shows image rows/cols 4..35 (32..35 black),
                 * flipped: black at the left 4 cols and bottom 4 rows; the
                 * stripe (image col 0) is cropped away. */
                assert_close(o[0], black, "k1", 0, c, 0, 0);
                assert_close(o[3], black, "k1", 0, c, 0, 3);
                assert_close(o[4], normalised(c, 200), "k1", 0, c, 0, 4);
                assert_close(o[27 * S + 31], normalised(c, 200), "k1", 0, c, 27, 31);
                assert_close(o[28 * S + 31], black, "k1", 0, c, 28, 31);
            } else {
                /* Centre crop, flipped: the stripe moves to column 31. */
                for (int y = 0; y < S; y++) {
                    assert_close(o[y * S + 31], normalised(c, (uint8_t)(10 + y)), "k2", 0, c, y,
                                 31);
                    assert_close(o[y * S + 0], normalised(c, 200), "k2", 0, c, y, 0);
                }
            }
        }
        free(records);
        free(rec);
    }
}

static void test_augment_draws(void **state)
{
    (void)state;
    enum { N = 18000 };
    cfx_augment a = {.enabled = 1, .seed = 5, .epoch = 2, .padding = CFX_CROP_PADDING};
    cfx_augment other_epoch = {.enabled = 1, .seed = 5, .epoch = 3, .padding = CFX_CROP_PADDING};
    cfx_augment other_seed = {.enabled = 1, .seed = 6, .epoch = 2, .padding = CFX_CROP_PADDING};
    int count_dy[9] = {0}, count_dx[9] = {0}, joint[9][9] = {{0}}, flips = 0;
    int diff_epoch = 0, diff_seed = 0;
    for (int i = 0; i < N; i++) {
        int dy, dx, flip, dy2, dx2, flip2;
        cfx_augment_draw(&a, i, &dy, &dx, &flip);
        assert_in_range(dy, 0, 2 * P);
        assert_in_range(dx, 0, 2 * P);
        assert_in_range(flip, 0, 1);
        cfx_augment_draw(&a, i, &dy2, &dx2, &flip2);
        assert_true(dy == dy2 && dx == dx2 && flip == flip2); /* deterministic */
        count_dy[dy]++;
        count_dx[dx]++;
        joint[dy][dx]++;
        flips += flip;
        cfx_augment_draw(&other_epoch, i, &dy2, &dx2, &flip2);
        diff_epoch += dy != dy2 || dx != dx2 || flip != flip2;
        cfx_augment_draw(&other_seed, i, &dy2, &dx2, &flip2);
        diff_seed += dy != dy2 || dx != dx2 || flip != flip2;
    }
    /* Uniform offsets 0..8: 2,000 expected each (sd ~ 42). */
    for (int v = 0; v <= 2 * P; v++) {
        if (count_dy[v] < 1800 || count_dy[v] > 2200 || count_dx[v] < 1800 || count_dx[v] > 2200)
            fail_msg("offset %d drawn %d times as dy, %d as dx (expected ~2000)", v, count_dy[v],
                     count_dx[v]);
        for (int w = 0; w <= 2 * P; w++)
            assert_true(joint[v][w] > 100); /* every (dy, dx) pair, ~222 each */
    }
    /* Flip with p = 0.5: 9,000 expected (sd ~ 67). */
    assert_in_range(flips, 8700, 9300);
    /* Another epoch or seed: other draws (1/162 of them agree by chance). */
    assert_true(diff_epoch > N * 9 / 10);
    assert_true(diff_seed > N * 9 / 10);
}

/* ---- the real data set, when present ------------------------------------ */

static void count_classes(const cfx_dataset *ds, int *counts)
{
    memset(counts, 0, sizeof(int) * CFX_NUM_CLASSES);
    for (int i = 0; i < ds->n; i++)
        counts[cfx_dataset_label(ds, i)]++;
}

static void test_real_data(void **state)
{
    (void)state;
#ifdef CFX_TEST_DATA_DIR
    const char *dir = CFX_TEST_DATA_DIR;
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/data_batch_1.bin", dir);
    struct stat st;
    if (stat(probe, &st) != 0) {
        print_message("skipping: no CIFAR-10 data at %s\n", dir);
        skip();
    }
    cfx_dataset train, test;
    cfx_error err;
    int counts[CFX_NUM_CLASSES];
    if (cfx_cifar10_open_train(&train, dir, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(train.n, 50000);
    count_classes(&train, counts);
    for (int c = 0; c < CFX_NUM_CLASSES; c++)
        assert_int_equal(counts[c], 5000);
    cfx_dataset_close(&train);
    if (cfx_cifar10_open_test(&test, dir, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(test.n, 10000);
    count_classes(&test, counts);
    for (int c = 0; c < CFX_NUM_CLASSES; c++)
        assert_int_equal(counts[c], 1000);
    cfx_dataset_close(&test);
#else
    skip();
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_reads_back_exactly),
        cmocka_unit_test(test_batch_views),
        cmocka_unit_test(test_tta_weights),
        cmocka_unit_test(test_augment_modes),
        cmocka_unit_test(test_open_missing_file),
        cmocka_unit_test(test_open_empty_file),
        cmocka_unit_test(test_open_partial_record),
        cmocka_unit_test(test_open_bad_label),
        cmocka_unit_test(test_open_wrong_record_count),
        cmocka_unit_test(test_open_directory),
        cmocka_unit_test(test_open_second_file_bad),
        cmocka_unit_test(test_open_file_count_limits),
        cmocka_unit_test(test_cifar10_folder),
        cmocka_unit_test(test_split_partition),
        cmocka_unit_test(test_split_seeded),
        cmocka_unit_test(test_split_limits),
        cmocka_unit_test(test_batch_plain),
        cmocka_unit_test(test_batch_augmented),
        cmocka_unit_test(test_batch_augmented_known_image),
        cmocka_unit_test(test_augment_draws),
        cmocka_unit_test(test_real_data),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
