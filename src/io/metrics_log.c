/* The metrics log (logs/metrics.h5): one extendible 1-D dataset per field
 * of cfx_epoch_metrics, a row per epoch, plus test results as root
 * attributes. Every call opens and closes the file, so h5dump and h5py can
 * read it between epochs; changes are made in memory and saved atomically
 * (temporary file, fsync, rename), so a crash never leaves a broken log. */
#include "cfx/checkpoint.h" /* defines: cfx_metrics_append, cfx_epoch_metrics */

#include <errno.h>
#include <hdf5.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "h5_util.h" /* defines: cfx_h5_err, cfx_h5_fail, cfx_h5_finish, cfx_h5_put_f64 */

#define CHUNK_ROWS 256

typedef struct {
    const char *name;
    size_t offset; /* in cfx_epoch_metrics */
    int is_int;    /* int field stored as int64, else double */
} field_def;

static const field_def FIELDS[] = {
    {"epoch", offsetof(cfx_epoch_metrics, epoch), 1},
    {"train_loss", offsetof(cfx_epoch_metrics, train_loss), 0},
    {"train_accuracy", offsetof(cfx_epoch_metrics, train_accuracy), 0},
    {"validation_loss", offsetof(cfx_epoch_metrics, validation_loss), 0},
    {"validation_accuracy", offsetof(cfx_epoch_metrics, validation_accuracy), 0},
    {"learning_rate", offsetof(cfx_epoch_metrics, learning_rate), 0},
    {"images_per_second", offsetof(cfx_epoch_metrics, images_per_second), 0},
    {"epoch_seconds", offsetof(cfx_epoch_metrics, epoch_seconds), 0},
    {"allreduce_seconds", offsetof(cfx_epoch_metrics, allreduce_seconds), 0},
};
#define N_FIELDS (int)(sizeof FIELDS / sizeof FIELDS[0])

/* Checks that an existing path is an HDF5 file, for both ways of opening. */
static int check_hdf5(const char *path, cfx_error *err)
{
    cfx_h5_err e = {0};
    int is_h5 = cfx_h5_is_hdf5(path, &e);
    if (is_h5 < 0)
        return cfx_fail(err, "%s: cannot open metrics log: %s", path, e.cause);
    if (is_h5 == 0)
        return cfx_fail(err, "%s: not an HDF5 file, not a metrics log", path);
    return 0;
}

/* Opens the log into memory for changes (cfx_h5_finish writes it back), or
 * creates it there if create is set. *missing is set (and -1 returned
 * without an error) if it does not exist and !create. */
static hid_t open_log(const char *path, int create, int *missing, cfx_error *err)
{
    cfx_h5_quiet();
    *missing = 0;
    struct stat st;
    cfx_h5_err e = {0};
    if (stat(path, &st) != 0) {
        if (errno != ENOENT)
            return cfx_fail(err, "%s: cannot open metrics log: %s", path, strerror(errno));
        if (!create) {
            *missing = 1;
            return -1;
        }
        hid_t f = cfx_h5_create_memory(path, &e);
        if (f < 0)
            return cfx_fail(err, "%s: cannot create metrics log: %s", path, e.cause);
        return f;
    }
    if (check_hdf5(path, err) != 0)
        return -1;
    hid_t f = cfx_h5_open_memory(path, &e);
    if (f < 0)
        return cfx_fail(err, "%s: cannot open metrics log: %s", path, e.cause);
    return f;
}

/* Opens every field's dataset into d[]; with create, makes missing ones
 * (empty, extendible, chunked, fletcher32). Returns the common row count
 * (the shortest dataset, should a past write have been cut short), 0 if
 * the log has no rows yet, or -1. */
static long open_fields(hid_t f, hid_t *d, int create, cfx_h5_err *e)
{
    long rows = -1;
    for (int i = 0; i < N_FIELDS; i++)
        d[i] = -1;
    for (int i = 0; i < N_FIELDS; i++) {
        const char *name = FIELDS[i].name;
        htri_t exists = H5Lexists(f, name, H5P_DEFAULT);
        if (exists < 0)
            return cfx_h5_fail(e, "looking up /%s", name);
        if (exists) {
            d[i] = H5Dopen2(f, name, H5P_DEFAULT);
        } else if (create) {
            hsize_t zero = 0, unlimited = H5S_UNLIMITED, chunk = CHUNK_ROWS;
            hid_t space = H5Screate_simple(1, &zero, &unlimited);
            hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
            if (space >= 0 && dcpl >= 0 && H5Pset_chunk(dcpl, 1, &chunk) >= 0 &&
                H5Pset_fletcher32(dcpl) >= 0)
                d[i] = H5Dcreate2(f, name, FIELDS[i].is_int ? H5T_STD_I64LE : H5T_IEEE_F64LE, space,
                                  H5P_DEFAULT, dcpl, H5P_DEFAULT);
            if (d[i] < 0)
                cfx_h5_fail(e, "creating /%s", name);
            if (dcpl >= 0)
                H5Pclose(dcpl);
            if (space >= 0)
                H5Sclose(space);
        } else {
            rows = 0; /* a log without this field has no complete rows */
            continue;
        }
        if (d[i] < 0)
            return cfx_h5_fail(e, "opening /%s", name);
        hid_t space = H5Dget_space(d[i]);
        hsize_t n = 0;
        int rank = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
        if (rank == 1)
            H5Sget_simple_extent_dims(space, &n, NULL);
        if (space >= 0)
            H5Sclose(space);
        if (rank != 1) {
            snprintf(e->what, sizeof e->what, "reading /%s", name);
            snprintf(e->cause, sizeof e->cause, "not a 1-D dataset");
            return -1;
        }
        if (rows < 0 || (long)n < rows)
            rows = (long)n;
    }
    return rows < 0 ? 0 : rows;
}

static void close_fields(hid_t *d)
{
    for (int i = 0; i < N_FIELDS; i++)
        if (d[i] >= 0)
            H5Dclose(d[i]);
}

/* Reads rows [0, n) of field i as doubles. */
static int read_field(hid_t d, int i, long n, double *out, cfx_h5_err *e)
{
    if (n == 0)
        return 0;
    hsize_t start = 0, count = (hsize_t)n;
    hid_t fs = H5Dget_space(d), ms = H5Screate_simple(1, &count, NULL);
    int rc = 0;
    if (fs < 0 || ms < 0 ||
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL) < 0 ||
        H5Dread(d, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, out) < 0)
        rc = cfx_h5_fail(e, "reading /%s", FIELDS[i].name);
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    return rc;
}

/* Cuts every field to n rows. */
static int set_rows(hid_t *d, hsize_t n, cfx_h5_err *e)
{
    for (int i = 0; i < N_FIELDS; i++)
        if (H5Dset_extent(d[i], &n) < 0)
            return cfx_h5_fail(e, "resizing /%s", FIELDS[i].name);
    return 0;
}

/* Index of the first row whose epoch is > last_epoch (rows are in epoch order). */
static int rows_up_to(hid_t *d, long n, int last_epoch, long *keep, cfx_h5_err *e)
{
    double *epochs = cfx_malloc((size_t)(n ? n : 1) * sizeof(double));
    int rc = read_field(d[0], 0, n, epochs, e);
    long k = 0;
    while (rc == 0 && k < n && epochs[k] <= last_epoch)
        k++;
    free(epochs);
    *keep = k;
    return rc;
}

int cfx_metrics_append(const char *path, const cfx_epoch_metrics *row, cfx_error *err)
{
    int missing;
    hid_t f = open_log(path, 1, &missing, err);
    if (f < 0)
        return -1;
    cfx_h5_err e = {0};
    hid_t d[N_FIELDS];
    long n = open_fields(f, d, 1, &e), keep = 0;
    int rc = n < 0 ? -1 : rows_up_to(d, n, row->epoch - 1, &keep, &e);
    /* Drop this epoch and later ones (a resumed run), then add the row. */
    if (rc == 0)
        rc = set_rows(d, (hsize_t)keep + 1, &e);
    for (int i = 0; i < N_FIELDS && rc == 0; i++) {
        const char *field = (const char *)row + FIELDS[i].offset;
        double v = FIELDS[i].is_int ? (double)*(const int *)field : *(const double *)field;
        hsize_t start = (hsize_t)keep, one = 1;
        hid_t fs = H5Dget_space(d[i]), ms = H5Screate_simple(1, &one, NULL);
        if (fs < 0 || ms < 0 ||
            H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &one, NULL) < 0 ||
            H5Dwrite(d[i], H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, &v) < 0)
            rc = cfx_h5_fail(&e, "writing /%s", FIELDS[i].name);
        if (ms >= 0)
            H5Sclose(ms);
        if (fs >= 0)
            H5Sclose(fs);
    }
    close_fields(d);
    rc = cfx_h5_finish(f, rc, path, &e);
    if (rc)
        return cfx_fail(err, "%s: cannot append epoch %d to the metrics log (%s): %s", path,
                        row->epoch, e.what, e.cause);
    return 0;
}

int cfx_metrics_truncate(const char *path, int last_epoch, cfx_error *err)
{
    int missing;
    hid_t f = open_log(path, 0, &missing, err);
    if (f < 0)
        return missing ? 0 : -1; /* no log yet: nothing to drop */
    cfx_h5_err e = {0};
    hid_t d[N_FIELDS];
    long n = open_fields(f, d, 1, &e), keep = 0;
    int rc = n < 0 ? -1 : rows_up_to(d, n, last_epoch, &keep, &e);
    if (rc == 0)
        rc = set_rows(d, (hsize_t)keep, &e);
    close_fields(d);
    rc = cfx_h5_finish(f, rc, path, &e);
    if (rc)
        return cfx_fail(err, "%s: cannot truncate the metrics log to epoch %d (%s): %s", path,
                        last_epoch, e.what, e.cause);
    return 0;
}

int cfx_metrics_set_test(const char *path, double test_loss, double test_accuracy,
                         const char *tta, cfx_error *err)
{
    int missing;
    hid_t f = open_log(path, 1, &missing, err);
    if (f < 0)
        return -1;
    cfx_h5_err e = {0};
    int rc = cfx_h5_put_f64(f, "test_loss", test_loss, &e) ||
             cfx_h5_put_f64(f, "test_accuracy", test_accuracy, &e) ||
             cfx_h5_put_str(f, "tta", tta ? tta : "none", &e);
    rc = cfx_h5_finish(f, rc, path, &e);
    if (rc)
        return cfx_fail(err, "%s: cannot record test results in the metrics log (%s): %s", path,
                        e.what, e.cause);
    return 0;
}

int cfx_metrics_read(const char *path, cfx_epoch_metrics **rows, int *n_rows, cfx_error *err)
{
    *rows = NULL;
    *n_rows = 0;
    cfx_h5_quiet();
    struct stat st;
    if (stat(path, &st) != 0)
        return cfx_fail(err, "%s: cannot open metrics log: %s", path, strerror(errno));
    if (check_hdf5(path, err) != 0)
        return -1;
    cfx_h5_err e = {0};
    hid_t f = cfx_h5_open_read(path, &e);
    if (f < 0)
        return cfx_fail(err, "%s: cannot open metrics log: %s", path, e.cause);
    hid_t d[N_FIELDS];
    long n = open_fields(f, d, 0, &e);
    int rc = n < 0 ? -1 : 0;
    cfx_epoch_metrics *out = cfx_calloc((size_t)(n > 0 ? n : 1), sizeof *out);
    double *col = cfx_malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int i = 0; i < N_FIELDS && rc == 0 && n > 0; i++) {
        rc = read_field(d[i], i, n, col, &e);
        for (long r = 0; rc == 0 && r < n; r++) {
            char *field = (char *)&out[r] + FIELDS[i].offset;
            if (FIELDS[i].is_int)
                *(int *)field = (int)col[r];
            else
                *(double *)field = col[r];
        }
    }
    free(col);
    close_fields(d);
    H5Fclose(f);
    if (rc) {
        free(out);
        if (e.flags & CFX_H5_CHECKSUM)
            return cfx_fail(err, "%s: damaged: checksum mismatch (%s)", path, e.what);
        return cfx_fail(err, "%s: cannot read the metrics log (%s): %s", path, e.what, e.cause);
    }
    *rows = out;
    *n_rows = (int)n;
    return 0;
}
