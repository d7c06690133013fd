/* Private HDF5 helpers shared by the checkpoint and the metrics log:
 * HDF5 errors turned into one-line causes, files built in memory and saved
 * atomically, and typed scalar attributes. Only src/io/ includes this. */
#ifndef CFX_IO_H5_UTIL_H
#define CFX_IO_H5_UTIL_H

#include <hdf5.h>
#include <stdint.h>

/* Flags of cfx_h5_err: what the HDF5 error stack said. */
enum {
    CFX_H5_CHECKSUM = 1,  /* a checksum (data or metadata) did not match */
    CFX_H5_LOCKED = 2,    /* another process holds the file lock */
    CFX_H5_TRUNCATED = 4, /* the file is shorter than its superblock says */
    CFX_H5_DAMAGED = 8,   /* a structure HDF5 would mis-read (cause says which) */
};

/* The first failure of a sequence of calls. */
typedef struct {
    char what[256];  /* what was being done, e.g. "writing /model/3.weight" */
    char cause[256]; /* the innermost reason, e.g. "No space left on device" */
    int flags;
} cfx_h5_err;

/* Stops HDF5 printing its error stack; cfx reports one line instead. */
void cfx_h5_quiet(void);

/* Records the current HDF5 error stack as the cause of a failure (only the
 * first failure is kept) and returns -1. Must run right after the failing
 * call: the next HDF5 call clears the stack. */
int cfx_h5_fail(cfx_h5_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records errno as the cause of a failed system call; returns -1. */
int cfx_h5_sys_fail(cfx_h5_err *e, const char *what, const char *file);

/* Creates a file that lives in memory until cfx_h5_save; HDF5 itself never
 * writes to the disk, so a full disk cannot leave HDF5 half-closed. */
hid_t cfx_h5_create_memory(const char *path, cfx_h5_err *e);

/* Opens an existing file (read-write) into memory, for cfx_h5_save. */
hid_t cfx_h5_open_memory(const char *path, cfx_h5_err *e);

/* 1 if path is an HDF5 file, 0 if not, -1 if it cannot be checked. */
int cfx_h5_is_hdf5(const char *path, cfx_h5_err *e);

/* Walks every global heap collection of the file (where variable-length
 * strings live) as HDF5 decodes it and fails with CFX_H5_DAMAGED on one
 * that HDF5 1.10 would loop on forever (a free-space object of size 0) or
 * read past (an object larger than its collection). The open functions
 * below call it first. */
int cfx_h5_check_global_heaps(const char *path, cfx_h5_err *e);

/* Opens a file on disk read-only. */
hid_t cfx_h5_open_read(const char *path, cfx_h5_err *e);

/* Closes an in-memory file f and replaces path with it atomically: writes
 * path.tmp, fsyncs it, renames it over path and fsyncs the directory. On
 * failure path is untouched and path.tmp removed. f is closed either way. */
int cfx_h5_save(hid_t f, const char *path, cfx_h5_err *e);
/* The end of every update: saves f as cfx_h5_save if status (the result of
 * the changes made to it) is 0, else closes it unsaved and returns status. */
int cfx_h5_finish(hid_t f, int status, const char *path, cfx_h5_err *e);

/* Scalar attributes, written or replaced. Strings are variable-length UTF-8
 * (h5py reads str); NULL writes "". */
int cfx_h5_put_str(hid_t loc, const char *name, const char *value, cfx_h5_err *e);
int cfx_h5_put_i64(hid_t loc, const char *name, int64_t v, cfx_h5_err *e);
int cfx_h5_put_u64(hid_t loc, const char *name, uint64_t v, cfx_h5_err *e);
int cfx_h5_put_f64(hid_t loc, const char *name, double v, cfx_h5_err *e);

/* Reads a scalar numeric attribute converted to mtype (H5T_NATIVE_INT64,
 * ...). where names loc in messages ("/train_state"). */
int cfx_h5_get_num(hid_t loc, const char *where, const char *name, hid_t mtype, void *value,
                   cfx_h5_err *e);
/* Reads a scalar string attribute (variable or fixed length) into a
 * malloc'd string. */
int cfx_h5_get_str(hid_t loc, const char *where, const char *name, char **value, cfx_h5_err *e);

#endif
