/* CIFAR-10 binary reader and the train/validation split. */
#define _DEFAULT_SOURCE /* madvise */
#include "cfx/data.h" /* defines: cfx_dataset_open, cfx_split_make */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfx/rng.h" /* defines: cfx_rng, cfx_shuffle */

const char *const CFX_CIFAR10_CLASSES[CFX_NUM_CLASSES] = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};

/* Maps one batch file and checks every label; keeps the descriptor open in
 * *fd_out for cfx_dataset_read. */
static int map_file(const char *path, long records_expected, void **map, size_t *len,
                    long *n_records, int *fd_out, cfx_error *err)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return cfx_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return cfx_fail(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return cfx_fail(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size == 0 || size % CFX_RECORD_BYTES != 0) {
        close(fd);
        return cfx_fail(err, "%s: size %zu bytes is not a whole number of %d-byte records", path,
                        size, CFX_RECORD_BYTES);
    }
    long n = (long)(size / CFX_RECORD_BYTES);
    if (records_expected > 0 && n != records_expected) {
        close(fd);
        return cfx_fail(err, "%s: holds %ld records, expected %ld", path, n, records_expected);
    }
    void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    if (p == MAP_FAILED) {
        close(fd);
        return cfx_fail(err, "%s: cannot map: %s", path, strerror(e));
    }
    const uint8_t *bytes = p;
    for (long i = 0; i < n; i++) {
        uint8_t label = bytes[(size_t)i * CFX_RECORD_BYTES];
        if (label >= CFX_NUM_CLASSES) {
            munmap(p, size);
            close(fd);
            return cfx_fail(err, "%s: record %ld has label %u, expected 0..9", path, i, label);
        }
        if (i % 1024 == 1023 || i == n - 1) /* scanned pages leave the RSS as they go */
            madvise(p, size, MADV_DONTNEED);
    }
    *map = p;
    *fd_out = fd;
    *len = size;
    *n_records = n;
    return 0;
}

int cfx_dataset_open(cfx_dataset *ds, const char *const *paths, int n_files,
                     long records_per_file, cfx_error *err)
{
    memset(ds, 0, sizeof *ds);
    if (n_files < 1 || n_files > CFX_MAX_DATA_FILES)
        return cfx_fail(err, "cfx_dataset_open: %d files (1..%d allowed)", n_files,
                        CFX_MAX_DATA_FILES);
    long counts[CFX_MAX_DATA_FILES], total = 0;
    for (int f = 0; f < n_files; f++) {
        if (map_file(paths[f], records_per_file, &ds->maps[f], &ds->map_len[f], &counts[f],
                     &ds->fds[f], err)) {
            cfx_dataset_close(ds);
            return -1;
        }
        ds->n_maps = f + 1;
        total += counts[f];
    }
    ds->n = (int)total;
    ds->records = cfx_malloc((size_t)total * sizeof *ds->records);
    long k = 0;
    ds->first[0] = 0;
    for (int f = 0; f < n_files; f++)
        ds->first[f + 1] = ds->first[f] + counts[f];
    for (int f = 0; f < n_files; f++)
        for (long i = 0; i < counts[f]; i++)
            ds->records[k++] = (const uint8_t *)ds->maps[f] + (size_t)i * CFX_RECORD_BYTES;
    return 0;
}

static int open_in_dir(cfx_dataset *ds, const char *dir, const char *const *names, int n,
                       cfx_error *err)
{
    char paths[CFX_MAX_DATA_FILES][4096];
    const char *ptrs[CFX_MAX_DATA_FILES];
    for (int i = 0; i < n; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/%s", dir, names[i]);
        ptrs[i] = paths[i];
    }
    return cfx_dataset_open(ds, ptrs, n, CFX_RECORDS_PER_FILE, err);
}

int cfx_cifar10_open_train(cfx_dataset *ds, const char *dir, cfx_error *err)
{
    static const char *const names[] = {"data_batch_1.bin", "data_batch_2.bin",
                                        "data_batch_3.bin", "data_batch_4.bin",
                                        "data_batch_5.bin"};
    return open_in_dir(ds, dir, names, 5, err);
}

int cfx_cifar10_open_test(cfx_dataset *ds, const char *dir, cfx_error *err)
{
    static const char *const names[] = {"test_batch.bin"};
    return open_in_dir(ds, dir, names, 1, err);
}

const uint8_t *cfx_dataset_read(const cfx_dataset *ds, int i, uint8_t *record)
{
    int f = 0;
    while (f + 1 < ds->n_maps && i >= ds->first[f + 1])
        f++;
    off_t at = (off_t)(i - ds->first[f]) * CFX_RECORD_BYTES;
    size_t got = 0;
    while (got < CFX_RECORD_BYTES) {
        ssize_t r = pread(ds->fds[f], record + got, CFX_RECORD_BYTES - got, at + (off_t)got);
        if (r <= 0 && !(r < 0 && errno == EINTR))
            return ds->records[i]; /* cannot happen to an intact file: use the mapping */
        if (r > 0)
            got += (size_t)r;
    }
    return record;
}

void cfx_dataset_close(cfx_dataset *ds)
{
    for (int f = 0; f < ds->n_maps; f++) {
        munmap(ds->maps[f], ds->map_len[f]);
        close(ds->fds[f]);
    }
    free(ds->records);
    memset(ds, 0, sizeof *ds);
}

int cfx_split_make(cfx_split *split, int n_total, long val_size, uint64_t seed, long train_limit,
                   long val_limit, cfx_error *err)
{
    memset(split, 0, sizeof *split);
    if (val_size < 1 || val_size >= n_total)
        return cfx_fail(err, "data.val_size: %ld must be between 1 and %d", val_size,
                        n_total - 1);
    int *perm = cfx_malloc((size_t)n_total * sizeof *perm);
    for (int i = 0; i < n_total; i++)
        perm[i] = i;
    cfx_rng rng;
    cfx_rng_seed(&rng, cfx_hash3(seed, 0x53504C4954ULL /* "SPLIT" */, (uint64_t)n_total));
    cfx_shuffle(perm, n_total, &rng);
    int n_train = n_total - (int)val_size, n_val = (int)val_size;
    split->n_train = train_limit > 0 && train_limit < n_train ? (int)train_limit : n_train;
    split->n_val = val_limit > 0 && val_limit < n_val ? (int)val_limit : n_val;
    split->train = cfx_malloc((size_t)split->n_train * sizeof(int));
    split->val = cfx_malloc((size_t)split->n_val * sizeof(int));
    memcpy(split->train, perm, (size_t)split->n_train * sizeof(int));
    memcpy(split->val, perm + n_train, (size_t)split->n_val * sizeof(int));
    free(perm);
    return 0;
}

void cfx_split_free(cfx_split *split)
{
    free(split->train);
    free(split->val);
    memset(split, 0, sizeof *split);
}
