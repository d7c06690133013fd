/* HDF5 checkpoints: the model's parameters under PyTorch state_dict names,
 * optimizer and training state, and who wrote the file. A checkpoint is
 * built in memory and saved atomically (temporary file, fsync, rename, fsync
 * of the directory); reads check every name and shape before anything is
 * loaded, and fletcher32 checksums catch damaged data. */
#include "cfx_build_info.h" /* defines: CFX_GIT_COMMIT (generated at build time) */
#include "cfx/checkpoint.h" /* defines: cfx_checkpoint_write, cfx_checkpoint_read */

#include <errno.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "h5_util.h" /* defines: cfx_h5_err, cfx_h5_fail, cfx_h5_finish, cfx_h5_put_str */

#ifndef CFX_VERSION
#define CFX_VERSION "unknown"
#endif
#ifndef CFX_GIT_COMMIT
#define CFX_GIT_COMMIT "unknown"
#endif

#define CKPT_FORMAT_VERSION 1

/* Informational (see cfx/rng.h): the seeds and the position are the RNG state. */
#define RNG_DESCRIPTION                                                                            \
    "counter-based (cfx_hash3, splitmix64): every random decision is a pure function of "          \
    "(seed or split_seed, stream, counter); seed, split_seed, epoch and step_in_epoch are the "    \
    "whole state"

/* One tensor of the model's state_dict: a parameter or a buffer. */
typedef struct {
    char key[2 * CFX_NAME_LEN]; /* state_dict key, "3.weight", "layer1.0.bn1.running_mean" */
    int rank;
    hsize_t dims[4]; /* PyTorch shape */
    size_t count;
    cfx_tensor_store store;
    void *data;          /* in the model's state */
    size_t state_offset; /* bytes from the start of the model's state */
    size_t param_offset; /* parameters: into params (and optimizer buffers) */
    const cfx_layer *layer;
} param_info;

/* Every tensor of the model, in state_dict order (malloc'd; *n of them). */
static param_info *list_params(const cfx_model *m, int *n)
{
    int total = 0;
    for (int i = 0; i < m->n_layers; i++)
        total += m->layers[i].n_tensors;
    param_info *p = cfx_calloc(total ? (size_t)total : 1, sizeof *p);
    *n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer *L = &m->layers[i];
        for (int t = 0; t < L->n_tensors; t++) {
            const cfx_tensor *T = &L->tensors[t];
            param_info *q = &p[(*n)++];
            snprintf(q->key, sizeof q->key, "%s.%s", L->key, T->suffix);
            q->layer = L;
            q->rank = T->rank, q->count = T->count, q->store = T->store;
            for (int d = 0; d < T->rank; d++)
                q->dims[d] = (hsize_t)T->dims[d];
            q->data = T->store == CFX_TENSOR_COUNT ? (void *)(m->counts + T->offset)
                                                   : (void *)cfx_layer_tensor(m, L, t);
            q->state_offset = (size_t)((char *)q->data - (char *)m->state);
            q->param_offset = T->offset;
        }
    }
    return p;
}

/* "64x16x3x3" */
static void shape_str(char *buf, size_t len, int rank, const hsize_t *dims)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < rank && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%llu", i ? "x" : "",
                                 (unsigned long long)dims[i]);
    if (rank == 0)
        snprintf(buf, len, "scalar");
}

/* ---- writing ------------------------------------------------------------ */

static hid_t create_group(hid_t loc, const char *name, cfx_h5_err *e)
{
    hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0)
        cfx_h5_fail(e, "creating group %s", name);
    return g;
}

/* A float32 (or, with is_int, int64) dataset stored as one chunk with the
 * fletcher32 checksum; scalars (rank 0) are contiguous. Returns it open (for
 * attributes), or -1. */
static hid_t write_tensor(hid_t loc, const char *where, const char *name, int rank,
                          const hsize_t *dims, const void *data, int is_int, cfx_h5_err *e)
{
    hid_t space = rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t d = -1;
    hid_t file_type = is_int ? H5T_STD_I64LE : H5T_IEEE_F32LE;
    hid_t mem_type = is_int ? H5T_NATIVE_INT64 : H5T_NATIVE_FLOAT;
    if (space < 0 || dcpl < 0 ||
        (rank && (H5Pset_chunk(dcpl, rank, dims) < 0 || H5Pset_fletcher32(dcpl) < 0)))
        cfx_h5_fail(e, "creating %s/%s", where, name);
    else if ((d = H5Dcreate2(loc, name, file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0)
        cfx_h5_fail(e, "creating %s/%s", where, name);
    else if (H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        cfx_h5_fail(e, "writing %s/%s", where, name);
        H5Dclose(d);
        d = -1;
    }
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (space >= 0)
        H5Sclose(space);
    return d;
}

/* The layer's description, as the arguments of its torch.nn module. */
static int write_layer_attrs(hid_t d, const cfx_layer *L, cfx_h5_err *e)
{
    int failed = cfx_h5_put_str(d, "layer_type", L->kind->torch_name, e);
    cfx_attr a[CFX_MAX_ATTRS];
    int n = L->kind->attrs ? L->kind->attrs(L, a) : 0;
    for (int i = 0; i < n && !failed; i++)
        failed = a[i].is_int ? cfx_h5_put_i64(d, a[i].name, (int64_t)a[i].value, e)
                             : cfx_h5_put_f64(d, a[i].name, a[i].value, e);
    return failed ? -1 : 0;
}

static int write_model(hid_t f, const param_info *p, int np, cfx_h5_err *e)
{
    hid_t g = create_group(f, "model", e);
    if (g < 0)
        return -1;
    int rc = 0;
    for (int i = 0; i < np && rc == 0; i++) {
        hid_t d = write_tensor(g, "/model", p[i].key, p[i].rank, p[i].dims, p[i].data,
                               p[i].store == CFX_TENSOR_COUNT, e);
        if (d < 0)
            rc = -1;
        else {
            rc = write_layer_attrs(d, p[i].layer, e);
            H5Dclose(d);
        }
    }
    H5Gclose(g);
    return rc;
}

/* Where tensor p's values are in a float array laid out as the model's
 * parameters (whole_state = 0) or its float state, parameters then buffers. */
static size_t float_offset(const param_info *p, int whole_state)
{
    return whole_state ? p->state_offset / sizeof(float) : p->param_offset;
}

/* /optimizer/<key>/<name> for every parameter (whole_state: and buffer) from
 * buf, laid out as float_offset says. */
static int write_optim_buffers(hid_t g, const param_info *p, int np, const char *name,
                               const float *buf, int whole_state, cfx_h5_err *e)
{
    for (int i = 0; i < np; i++) {
        if (p[i].store != CFX_TENSOR_PARAM && (!whole_state || p[i].store != CFX_TENSOR_BUFFER))
            continue;
        htri_t have = H5Lexists(g, p[i].key, H5P_DEFAULT);
        hid_t sub = have > 0 ? H5Gopen2(g, p[i].key, H5P_DEFAULT) : create_group(g, p[i].key, e);
        if (sub < 0)
            return cfx_h5_fail(e, "creating group /optimizer/%s", p[i].key);
        char where[2 * CFX_NAME_LEN + 16];
        snprintf(where, sizeof where, "/optimizer/%s", p[i].key);
        hid_t d = write_tensor(sub, where, name, p[i].rank, p[i].dims,
                               buf + float_offset(&p[i], whole_state), 0, e);
        if (d >= 0)
            H5Dclose(d);
        H5Gclose(sub);
        if (d < 0)
            return -1;
    }
    return 0;
}

static int write_optim(hid_t f, const cfx_optim *o, const param_info *p, int np, cfx_h5_err *e)
{
    hid_t g = create_group(f, "optimizer", e);
    if (g < 0)
        return -1;
    int adam = o->kind == CFX_OPTIM_ADAM;
    int rc = cfx_h5_put_str(g, "name", adam ? "adam" : "sgd", e) ||
             cfx_h5_put_f64(g, "lr", o->lr, e) || cfx_h5_put_f64(g, "beta1", o->beta1, e) ||
             cfx_h5_put_f64(g, "beta2", o->beta2, e) || cfx_h5_put_f64(g, "eps", o->eps, e) ||
             cfx_h5_put_f64(g, "momentum", o->momentum, e) ||
             cfx_h5_put_f64(g, "weight_decay", o->weight_decay, e) ||
             cfx_h5_put_i64(g, "nesterov", o->nesterov, e) || cfx_h5_put_i64(g, "step", o->step, e);
    if (rc == 0 && adam)
        rc = write_optim_buffers(g, p, np, "exp_avg", o->m, 0, e) ||
             write_optim_buffers(g, p, np, "exp_avg_sq", o->v, 0, e);
    else if (rc == 0 && o->momentum != 0.0)
        rc = write_optim_buffers(g, p, np, "momentum_buffer", o->m, 0, e);
    /* lookahead: /model holds the average, these the weights being trained */
    if (rc == 0 && o->lookahead)
        rc = cfx_h5_put_i64(g, "lookahead_steps", o->lookahead_steps, e) ||
             write_optim_buffers(g, p, np, "fast_weights", o->lookahead, 1, e);
    H5Gclose(g);
    return rc ? -1 : 0;
}

static int write_state(hid_t f, const cfx_train_state *s, cfx_h5_err *e)
{
    hid_t g = create_group(f, "train_state", e);
    if (g < 0)
        return -1;
    int rc = cfx_h5_put_i64(g, "epoch", s->epoch, e) ||
             cfx_h5_put_i64(g, "global_step", s->global_step, e) ||
             cfx_h5_put_i64(g, "step_in_epoch", s->step_in_epoch, e) ||
             cfx_h5_put_f64(g, "best_validation_accuracy", s->best_validation_accuracy, e) ||
             cfx_h5_put_i64(g, "best_epoch", s->best_epoch, e) ||
             cfx_h5_put_f64(g, "epoch_loss_sum", s->epoch_loss_sum, e) ||
             cfx_h5_put_f64(g, "epoch_correct", s->epoch_correct, e) ||
             cfx_h5_put_u64(g, "seed", s->seed, e) ||
             cfx_h5_put_u64(g, "split_seed", s->split_seed, e) ||
             cfx_h5_put_str(g, "rng", RNG_DESCRIPTION, e);
    H5Gclose(g);
    return rc ? -1 : 0;
}

static int write_root(hid_t f, const cfx_run_meta *meta, cfx_h5_err *e)
{
    cfx_run_meta none = {0};
    const cfx_run_meta *m = meta ? meta : &none;
    const char *version = m->cfx_version ? m->cfx_version : CFX_VERSION;
    const char *commit = m->git_commit ? m->git_commit : CFX_GIT_COMMIT;
    int failed = cfx_h5_put_i64(f, "format_version", CKPT_FORMAT_VERSION, e) ||
                 cfx_h5_put_str(f, "config", m->config_text, e) ||
                 cfx_h5_put_str(f, "layers", m->layers_text, e) ||
                 cfx_h5_put_str(f, "cfx_version", version, e) ||
                 cfx_h5_put_str(f, "git_commit", commit, e) ||
                 cfx_h5_put_i64(f, "ranks", m->ranks, e) ||
                 cfx_h5_put_str(f, "blas_core", m->blas_core, e) ||
                 cfx_h5_put_i64(f, "blas_threads", m->blas_threads, e) ||
                 cfx_h5_put_u64(f, "seed", m->seed, e) || cfx_h5_put_str(f, "host", m->host, e) ||
                 cfx_h5_put_str(f, "start_time", m->start_time, e);
    return failed ? -1 : 0;
}

int cfx_checkpoint_write(const char *path, const cfx_model *model, const cfx_optim *optim,
                         const cfx_train_state *state, const cfx_run_meta *meta, cfx_error *err)
{
    cfx_h5_quiet();
    if (optim && optim->n != model->n_params)
        return cfx_fail(err,
                        "%s: cannot write checkpoint: the optimizer holds %zu values, the "
                        "model has %zu parameters",
                        path, optim->n, model->n_params);
    if (optim && optim->lookahead && !optim->model_has_average)
        return cfx_fail(err, "%s: cannot write checkpoint: the model holds the fast weights of "
                             "lookahead, not their average", path);
    int np;
    param_info *p = list_params(model, &np);
    /* Built in memory, then written to path.tmp, synced and renamed. */
    cfx_h5_err e = {0};
    hid_t f = cfx_h5_create_memory(path, &e);
    if (f < 0) {
        free(p);
        return cfx_fail(err, "%s: cannot write checkpoint (%s): %s", path, e.what, e.cause);
    }
    int rc = write_root(f, meta, &e) || write_model(f, p, np, &e) ||
             (optim && write_optim(f, optim, p, np, &e)) || (state && write_state(f, state, &e));
    rc = cfx_h5_finish(f, rc, path, &e);
    free(p);
    if (rc)
        return cfx_fail(err, "%s: cannot write checkpoint (%s): %s", path, e.what, e.cause);
    return 0;
}

/* ---- reading ------------------------------------------------------------ */

/* Opens path read-only after checking that it is an HDF5 file at all. */
static hid_t open_checkpoint(const char *path, cfx_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return cfx_fail(err, "%s: cannot open checkpoint: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return cfx_fail(err, "%s: is a directory, not a checkpoint file", path);
    if (st.st_size == 0)
        return cfx_fail(err, "%s: empty file, not a checkpoint", path);
    cfx_h5_err e = {0};
    int is_h5 = cfx_h5_is_hdf5(path, &e);
    if (is_h5 < 0)
        return cfx_fail(err, "%s: cannot open checkpoint: %s", path, e.cause);
    if (is_h5 == 0)
        return cfx_fail(err, "%s: not an HDF5 file (%lld bytes; truncated, or another format)",
                        path, (long long)st.st_size);
    hid_t f = cfx_h5_open_read(path, &e);
    if (f >= 0)
        return f;
    if (e.flags & CFX_H5_TRUNCATED)
        return cfx_fail(err, "%s: truncated HDF5 file (%lld bytes): the checkpoint is incomplete",
                        path, (long long)st.st_size);
    if (e.flags & CFX_H5_CHECKSUM)
        return cfx_fail(err, "%s: damaged: checksum mismatch in the file's metadata", path);
    if (e.flags & CFX_H5_DAMAGED)
        return cfx_fail(err, "%s: damaged: %s", path, e.cause);
    return cfx_fail(err, "%s: cannot open checkpoint (damaged HDF5 file?): %s", path, e.cause);
}

/* Reports the failed HDF5 read of obj: damage if a checksum did not match. */
static int read_error(const char *path, const char *obj, cfx_error *err)
{
    cfx_h5_err e = {0};
    cfx_h5_fail(&e, "reading %s", obj);
    if (e.flags & CFX_H5_CHECKSUM)
        return cfx_fail(err, "%s: damaged: checksum mismatch in %s", path, obj);
    return cfx_fail(err, "%s: cannot read %s (damaged file?): %s", path, obj, e.cause);
}

/* Whether the relative path "a/b/c" exists below loc, checking each link:
 * 1 yes, 0 no, -1 HDF5 error (left on the error stack). */
static int path_exists(hid_t loc, const char *rel)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", rel);
    for (char *s = buf;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char saved = *s;
        *s = '\0';
        htri_t has = H5Lexists(loc, buf, H5P_DEFAULT);
        if (has <= 0)
            return has < 0 ? -1 : 0;
        if (!saved)
            return 1;
        *s = saved;
    }
}

/* Opens group name of f, which must exist (else missing is the message). */
static hid_t open_group(hid_t f, const char *name, const char *missing, const char *path,
                        cfx_error *err)
{
    char obj[64];
    snprintf(obj, sizeof obj, "/%s", name);
    int has = path_exists(f, name);
    if (has < 0)
        return read_error(path, obj, err);
    if (!has)
        return cfx_fail(err, "%s: %s", path, missing);
    hid_t g = H5Gopen2(f, name, H5P_DEFAULT);
    if (g < 0)
        return read_error(path, obj, err);
    return g;
}

/* Reports a failed attribute read of obj. */
static int attr_error(const char *path, const char *obj, const cfx_h5_err *e, cfx_error *err)
{
    if (e->flags & CFX_H5_CHECKSUM)
        return cfx_fail(err, "%s: damaged: checksum mismatch in %s", path, obj);
    return cfx_fail(err, "%s: %s: %s", path, e->what, e->cause);
}

/* HDF5 allocates what a dataset's layout and chunk index say before it
 * checks anything: a damaged size field would make it allocate gigabytes
 * (found by tests/fuzz/fuzz_checkpoint). A dataset of count floats is
 * stored in at most count floats per chunk and, with checksums, about
 * 4 * count bytes in all. */
static int check_storage(hid_t d, size_t count, const char *full, const char *path, cfx_error *err)
{
    hid_t dcpl = H5Dget_create_plist(d);
    hsize_t chunk[H5S_MAX_RANK];
    int ok = dcpl >= 0, rank = 0;
    if (ok && H5Pget_layout(dcpl) == H5D_CHUNKED) {
        rank = H5Pget_chunk(dcpl, H5S_MAX_RANK, chunk);
        hsize_t elements = 1;
        for (int i = 0; i < rank && elements <= count; i++)
            elements *= chunk[i];
        ok = rank > 0 && elements <= count;
    }
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (!ok) {
        H5Eclear2(H5E_DEFAULT);
        return cfx_fail(err, "%s: damaged: %s has an impossible chunk layout", path, full);
    }
    hsize_t stored = H5Dget_storage_size(d);
    if (stored <= 2 * (hsize_t)count * sizeof(float) + 4096)
        return 0;
    H5Eclear2(H5E_DEFAULT);
    return cfx_fail(err, "%s: damaged: %s claims %llu bytes of storage for %zu values", path, full,
                    (unsigned long long)stored, count);
}

/* Checks that loc/rel is an array of p's shape (float, or integer for
 * counters) and, if out is not NULL, reads it. label names it in messages
 * ("parameter 3.weight"), full is its absolute path ("/model/3.weight").
 * Missing counts as a mismatch. */
static int read_tensor(hid_t loc, const char *rel, const char *label, const char *full,
                       const param_info *p, void *out, const char *path, cfx_error *err)
{
    const int is_int = p->store == CFX_TENSOR_COUNT;
    char want[64], have[64];
    shape_str(want, sizeof want, p->rank, p->dims);
    int has = path_exists(loc, rel);
    if (has < 0)
        return read_error(path, full, err);
    if (!has)
        return cfx_fail(err, "%s: %s is missing from the file (the model expects %s)", path, label,
                        want);
    cfx_h5_err e = {0};
    hid_t d = H5Dopen2(loc, rel, H5P_DEFAULT);
    if (d < 0) {
        cfx_h5_fail(&e, "opening %s", full);
        if (e.flags & CFX_H5_CHECKSUM)
            return cfx_fail(err, "%s: damaged: checksum mismatch in %s", path, full);
        return cfx_fail(err, "%s: %s is not a readable dataset: %s", path, full, e.cause);
    }
    int rc = 0;
    hid_t space = H5Dget_space(d), type = H5Dget_type(d);
    hsize_t dims[H5S_MAX_RANK];
    int rank = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    if (rank < 0 || type < 0 || H5Sget_simple_extent_dims(space, dims, NULL) < 0) {
        cfx_h5_fail(&e, "reading the shape of %s", full);
        rc = cfx_fail(err, "%s: cannot read the shape of %s: %s", path, full, e.cause);
    } else if (H5Tget_class(type) != (is_int ? H5T_INTEGER : H5T_FLOAT)) {
        rc = cfx_fail(err, "%s: %s is not %s array", path, full,
                      is_int ? "an integer" : "a floating-point");
    } else {
        int same = rank == p->rank;
        for (int i = 0; same && i < rank; i++)
            same = dims[i] == p->dims[i];
        if (!same) {
            shape_str(have, sizeof have, rank, dims);
            rc = cfx_fail(err, "%s: %s has shape %s in the file, the model expects %s", path, label,
                          have, want);
        }
    }
    if (rc == 0 && out)
        rc = check_storage(d, p->count, full, path, err);
    if (rc == 0 && out &&
        H5Dread(d, is_int ? H5T_NATIVE_INT64 : H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                out) < 0) {
        cfx_h5_fail(&e, "reading %s", full);
        if (e.flags & CFX_H5_CHECKSUM)
            rc = cfx_fail(err, "%s: damaged: checksum mismatch in %s", path, full);
        else
            rc = cfx_fail(err, "%s: cannot read %s: %s", path, full, e.cause);
    }
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    H5Dclose(d);
    return rc;
}

/* Checks /model against the model's tensors (names and shapes, no data)
 * and, if state is not NULL, reads them into it (laid out as the model's). */
static int read_model(hid_t f, const param_info *p, int np, char *state, const char *path,
                      cfx_error *err)
{
    hid_t g = open_group(f, "model", "no /model group: not a cfx checkpoint", path, err);
    if (g < 0)
        return -1;
    int rc = 0;
    for (int i = 0; i < np && rc == 0; i++) {
        char label[2 * CFX_NAME_LEN + 16], full[2 * CFX_NAME_LEN + 16];
        snprintf(label, sizeof label, "%s %s",
                 p[i].store == CFX_TENSOR_PARAM ? "parameter" : "buffer", p[i].key);
        snprintf(full, sizeof full, "/model/%s", p[i].key);
        rc = read_tensor(g, p[i].key, label, full, &p[i], state ? state + p[i].state_offset : NULL,
                         path, err);
    }
    /* Anything else under /model belongs to another architecture. */
    H5G_info_t info = {.nlinks = 0};
    if (rc == 0 && H5Gget_info(g, &info) < 0)
        rc = read_error(path, "/model", err);
    for (hsize_t k = 0; rc == 0 && k < info.nlinks; k++) {
        char name[256];
        if (H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, k, name, sizeof name,
                               H5P_DEFAULT) < 0) {
            rc = read_error(path, "/model", err);
            break;
        }
        int known = 0;
        for (int i = 0; i < np && !known; i++)
            known = strcmp(name, p[i].key) == 0;
        if (!known)
            rc = cfx_fail(err,
                          "%s: parameter %s is in the file but not in the model (the "
                          "checkpoint was written for another layer list)",
                          path, name);
    }
    H5Gclose(g);
    return rc;
}

/* Lookahead's fast weights (/optimizer/<key>/fast_weights of every
 * parameter and buffer) into fast, laid out as the model's float state. */
static int read_fast_weights(hid_t g, const param_info *p, int np, float *fast, const char *path,
                             cfx_error *err)
{
    for (int i = 0; i < np; i++) {
        if (p[i].store == CFX_TENSOR_COUNT)
            continue;
        char rel[3 * CFX_NAME_LEN], full[4 * CFX_NAME_LEN];
        snprintf(rel, sizeof rel, "%s/fast_weights", p[i].key);
        snprintf(full, sizeof full, "/optimizer/%s", rel);
        int has = path_exists(g, rel);
        if (has <= 0)
            return has < 0 ? read_error(path, full, err)
                           : cfx_fail(err, "%s: no lookahead state (%s): the checkpoint was "
                                           "written without optim.lookahead_steps",
                                      path, full);
        if (read_tensor(g, rel, full, full, &p[i], fast + float_offset(&p[i], 1), path, err))
            return -1;
    }
    return 0;
}

/* Reads optimizer step and buffers into step, m, v (v only for Adam) and,
 * with lookahead, fast. Hyperparameters stay as configured for this run. */
static int read_optim(hid_t f, const cfx_optim *o, const param_info *p, int np, long *step,
                      float *m, float *v, float *fast, const char *path, cfx_error *err)
{
    hid_t g =
        open_group(f, "optimizer", "no optimizer state (/optimizer) in the checkpoint", path, err);
    if (g < 0)
        return -1;
    cfx_h5_err e = {0};
    char *name = NULL;
    int64_t step64 = 0;
    int adam = o->kind == CFX_OPTIM_ADAM, rc = 0;
    if (cfx_h5_get_str(g, "/optimizer", "name", &name, &e) < 0 ||
        cfx_h5_get_num(g, "/optimizer", "step", H5T_NATIVE_INT64, &step64, &e) < 0)
        rc = attr_error(path, "/optimizer", &e, err);
    else if (strcmp(name, adam ? "adam" : "sgd") != 0)
        rc = cfx_fail(err, "%s: the checkpoint holds '%s' optimizer state, this run uses '%s'",
                      path, name, adam ? "adam" : "sgd");
    *step = (long)step64;
    for (int i = 0; i < np && rc == 0; i++) {
        if (p[i].store != CFX_TENSOR_PARAM)
            continue;
        const char *names[2] = {"exp_avg", "exp_avg_sq"};
        float *bufs[2] = {m, v};
        int nbuf = adam ? 2 : 1;
        if (!adam) {
            names[0] = "momentum_buffer";
            /* No buffer (momentum was 0): m stays zero (calloc'd), which torch's
             * first step treats the same. */
            char rel[3 * CFX_NAME_LEN];
            snprintf(rel, sizeof rel, "%s/momentum_buffer", p[i].key);
            int has = o->momentum == 0.0 ? 0 : path_exists(g, rel);
            if (has < 0) {
                char full[4 * CFX_NAME_LEN];
                snprintf(full, sizeof full, "/optimizer/%s", rel);
                rc = read_error(path, full, err);
                break;
            }
            if (!has)
                continue;
        }
        for (int b = 0; b < nbuf && rc == 0; b++) {
            char rel[3 * CFX_NAME_LEN], full[4 * CFX_NAME_LEN];
            snprintf(rel, sizeof rel, "%s/%s", p[i].key, names[b]);
            snprintf(full, sizeof full, "/optimizer/%s", rel);
            rc = read_tensor(g, rel, full, full, &p[i], bufs[b] + p[i].param_offset, path, err);
        }
    }
    if (rc == 0 && fast)
        rc = read_fast_weights(g, p, np, fast, path, err);
    free(name);
    H5Gclose(g);
    return rc;
}

static int read_state(hid_t f, cfx_train_state *s, const char *path, cfx_error *err)
{
    hid_t g = open_group(f, "train_state", "no training state (/train_state) in the checkpoint",
                         path, err);
    if (g < 0)
        return -1;
    cfx_h5_err e = {0};
    int64_t epoch, global_step, step_in_epoch, best_epoch;
    const char *w = "/train_state";
    int rc = cfx_h5_get_num(g, w, "epoch", H5T_NATIVE_INT64, &epoch, &e) ||
             cfx_h5_get_num(g, w, "global_step", H5T_NATIVE_INT64, &global_step, &e) ||
             cfx_h5_get_num(g, w, "step_in_epoch", H5T_NATIVE_INT64, &step_in_epoch, &e) ||
             cfx_h5_get_num(g, w, "best_validation_accuracy", H5T_NATIVE_DOUBLE,
                            &s->best_validation_accuracy, &e) ||
             cfx_h5_get_num(g, w, "best_epoch", H5T_NATIVE_INT64, &best_epoch, &e) ||
             cfx_h5_get_num(g, w, "epoch_loss_sum", H5T_NATIVE_DOUBLE, &s->epoch_loss_sum, &e) ||
             cfx_h5_get_num(g, w, "epoch_correct", H5T_NATIVE_DOUBLE, &s->epoch_correct, &e) ||
             cfx_h5_get_num(g, w, "seed", H5T_NATIVE_UINT64, &s->seed, &e) ||
             cfx_h5_get_num(g, w, "split_seed", H5T_NATIVE_UINT64, &s->split_seed, &e);
    H5Gclose(g);
    if (rc)
        return attr_error(path, "/train_state", &e, err);
    s->epoch = (int)epoch;
    s->global_step = (long)global_step;
    s->step_in_epoch = (int)step_in_epoch;
    s->best_epoch = (int)best_epoch;
    return 0;
}

int cfx_checkpoint_read(const char *path, cfx_model *model, cfx_optim *optim,
                        cfx_train_state *state, cfx_error *err)
{
    cfx_h5_quiet();
    if (optim && optim->n != model->n_params)
        return cfx_fail(err,
                        "%s: cannot load: the optimizer holds %zu values, the model has %zu "
                        "parameters",
                        path, optim->n, model->n_params);
    hid_t f = open_checkpoint(path, err);
    if (f < 0)
        return -1;
    int np;
    param_info *p = list_params(model, &np);
    size_t n = model->n_params;
    /* Everything is read into copies first: a failed load changes nothing. */
    char *params = cfx_malloc(model->state_bytes ? model->state_bytes : 1);
    float *m = optim ? cfx_calloc(n, sizeof(float)) : NULL;
    float *v = optim && optim->v ? cfx_calloc(n, sizeof(float)) : NULL;
    float *fast = optim && optim->lookahead ? cfx_calloc(optim->n_state, sizeof(float)) : NULL;
    long step = 0;
    cfx_train_state st = {0};
    int rc = read_model(f, p, np, NULL, path, err) || read_model(f, p, np, params, path, err) ||
             (optim && read_optim(f, optim, p, np, &step, m, v, fast, path, err)) ||
             (state && read_state(f, &st, path, err));
    H5Fclose(f);
    if (!rc) {
        memcpy(model->state, params, model->state_bytes);
        if (optim) {
            optim->step = step;
            memcpy(optim->m, m, n * sizeof(float));
            if (v)
                memcpy(optim->v, v, n * sizeof(float));
            if (fast) { /* the model now holds the average */
                memcpy(optim->lookahead, fast, optim->n_state * sizeof(float));
                optim->model_has_average = 1;
            }
        }
        if (state)
            *state = st;
    }
    free(p);
    free(params);
    free(m);
    free(v);
    free(fast);
    return rc ? -1 : 0;
}

int cfx_checkpoint_read_attr(const char *path, const char *name, char **value, cfx_error *err)
{
    cfx_h5_quiet();
    hid_t f = open_checkpoint(path, err);
    if (f < 0)
        return -1;
    cfx_h5_err e = {0};
    int rc = cfx_h5_get_str(f, "/", name, value, &e);
    H5Fclose(f);
    if (rc)
        return attr_error(path, "/", &e, err);
    return 0;
}
