/* HDF5 helpers of src/io: one-line error causes from the HDF5 error stack,
 * in-memory files saved atomically (temp file, fsync, rename, fsync of the
 * directory), and scalar attributes. */
#include "h5_util.h" /* defines: cfx_h5_err, cfx_h5_save, cfx_h5_finish, cfx_h5_put_str */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cfx/common.h" /* defines: cfx_malloc, CFX_ERROR_LEN */

#define MEMORY_INCREMENT (1 << 20) /* in-memory files grow by 1 MiB */
#define LOCK_RETRIES 40            /* x 50 ms while another process holds the lock */

void cfx_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

typedef struct {
    char inner[256]; /* description of the innermost error */
    char sys[128];   /* strerror text recorded by a failed system call */
    int flags;
} stack_walk;

static herr_t walk_cb(unsigned n, const H5E_error2_t *err, void *data)
{
    stack_walk *w = data;
    const char *d = err->desc ? err->desc : "";
    if (n == 0)
        snprintf(w->inner, sizeof w->inner, "%s", d);
    /* HDF5's system-call errors end in "errno = N, error message = '...'". */
    const char *p = strstr(d, "error message = '");
    if (p && !w->sys[0]) {
        p += strlen("error message = '");
        const char *q = strchr(p, '\'');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len >= sizeof w->sys)
            len = sizeof w->sys - 1;
        memcpy(w->sys, p, len);
        w->sys[len] = '\0';
    }
    if (strstr(d, "Fletcher32") || strstr(d, "checksum"))
        w->flags |= CFX_H5_CHECKSUM;
    if (strstr(d, "unable to lock"))
        w->flags |= CFX_H5_LOCKED;
    if (strstr(d, "truncated file"))
        w->flags |= CFX_H5_TRUNCATED;
    return 0;
}

static stack_walk walk_stack(void)
{
    stack_walk w = {.flags = 0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, &w);
    return w;
}

int cfx_h5_fail(cfx_h5_err *e, const char *fmt, ...)
{
    if (e->what[0])
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->what, sizeof e->what, fmt, ap);
    va_end(ap);
    stack_walk w = walk_stack();
    H5Eclear2(H5E_DEFAULT);
    const char *cause = w.sys[0] ? w.sys : w.inner[0] ? w.inner : "unknown HDF5 error";
    if (w.flags & CFX_H5_CHECKSUM)
        snprintf(e->cause, sizeof e->cause, "checksum mismatch");
    else if ((w.flags & CFX_H5_LOCKED) && strcmp(w.sys, "Function not implemented") == 0)
        snprintf(e->cause, sizeof e->cause,
                 "the file system does not support file locking (set HDF5_USE_FILE_LOCKING=FALSE)");
    else if (w.flags & CFX_H5_LOCKED)
        snprintf(e->cause, sizeof e->cause, "locked by another process (%.200s)", cause);
    else
        snprintf(e->cause, sizeof e->cause, "%s", cause);
    e->flags = w.flags;
    return -1;
}

int cfx_h5_sys_fail(cfx_h5_err *e, const char *what, const char *file)
{
    int saved = errno;
    if (!e->what[0]) {
        /* A very long file name is cut; the caller's message names path in full. */
        if (snprintf(e->what, sizeof e->what, "%s %s", what, file) >= (int)sizeof e->what)
            memcpy(e->what + sizeof e->what - 4, "...", 4);
        snprintf(e->cause, sizeof e->cause, "%s", strerror(saved));
    }
    return -1;
}

/* HDF5 1.8 object formats (readable by any HDF5 >= 1.8, with checksummed
 * metadata); closing a file closes everything in it. */
static hid_t make_fapl(int memory)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0)
        return -1;
    if (H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18) < 0 ||
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0 ||
        (memory && H5Pset_fapl_core(fapl, MEMORY_INCREMENT, 0) < 0)) {
        H5Pclose(fapl);
        return -1;
    }
    return fapl;
}

/* Little-endian unsigned integer of n bytes. */
static uint64_t get_le(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

int cfx_h5_check_global_heaps(const char *path, cfx_h5_err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cfx_h5_sys_fail(e, "opening", path);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 16) {
        close(fd);
        return 0; /* HDF5 reports what is wrong with it */
    }
    size_t n = (size_t)st.st_size;
    unsigned char *b = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (b == MAP_FAILED)
        return cfx_h5_sys_fail(e, "reading", path);
    /* Size of lengths from a superblock at 0 (versions 0/1: byte 14, 2/3: 10). */
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    size_t len = 8;
    if (n > 14 && memcmp(b, sig, 8) == 0)
        len = b[8] < 2 ? b[14] : b[10];
    int rc = 0;
    if (len == 2 || len == 4 || len == 8) {
        const size_t hdr = 8 + len; /* collection header; object header: 8 + len */
        for (size_t at = 0; rc == 0 && at + hdr <= n; at++) {
            const unsigned char *c = memchr(b + at, 'G', n - at);
            if (!c)
                break;
            at = (size_t)(c - b);
            if (at + hdr > n || memcmp(c, "GCOL\1\0\0\0", 8) != 0)
                continue;
            uint64_t size = get_le(c + 8, len);
            if (size < 4096 || size > n - at)
                continue; /* not a collection, or one HDF5 cannot read (an error) */
            size_t p = hdr;
            while (rc == 0 && p < size && p + hdr <= size) { /* a shorter tail is free space */
                unsigned idx = (unsigned)get_le(c + p, 2);
                uint64_t obj = get_le(c + p + 8, len);
                uint64_t need = idx ? hdr + (obj + 7) / 8 * 8 : obj;
                if (need == 0 || obj > size - p || need > size - p) {
                    snprintf(e->what, sizeof e->what, "checking %s", path);
                    snprintf(e->cause, sizeof e->cause,
                             "corrupt global heap at byte %zu (object %u of size %llu)",
                             at + p, idx, (unsigned long long)obj);
                    e->flags |= CFX_H5_DAMAGED;
                    rc = -1;
                }
                p += (size_t)need;
            }
            at += size - 1; /* the strings inside were checked as objects */
        }
    }
    munmap(b, n);
    return rc;
}

/* H5Fopen that waits up to ~2 s while another process holds the file lock
 * (e.g. h5dump reading the metrics log). */
static hid_t open_file(const char *path, unsigned flags, int memory, cfx_h5_err *e)
{
    if (cfx_h5_check_global_heaps(path, e) != 0)
        return -1;
    hid_t fapl = make_fapl(memory);
    if (fapl < 0)
        return cfx_h5_fail(e, "opening %s", path);
    hid_t f = -1;
    for (int attempt = 0; attempt < LOCK_RETRIES; attempt++) {
        f = H5Fopen(path, flags, fapl);
        if (f >= 0 || !(walk_stack().flags & CFX_H5_LOCKED) || attempt == LOCK_RETRIES - 1)
            break;
        H5Eclear2(H5E_DEFAULT);
        nanosleep(&(struct timespec){0, 50 * 1000 * 1000}, NULL);
    }
    if (f < 0)
        cfx_h5_fail(e, "opening %s", path);
    H5Pclose(fapl);
    return f;
}

int cfx_h5_is_hdf5(const char *path, cfx_h5_err *e)
{
#if H5_VERSION_GE(1, 12, 0)
    htri_t is_h5 = H5Fis_accessible(path, H5P_DEFAULT);
#else
    htri_t is_h5 = H5Fis_hdf5(path);
#endif
    if (is_h5 < 0)
        return cfx_h5_fail(e, "checking %s", path);
    return is_h5 > 0;
}

hid_t cfx_h5_open_read(const char *path, cfx_h5_err *e)
{
    return open_file(path, H5F_ACC_RDONLY, 0, e);
}

hid_t cfx_h5_open_memory(const char *path, cfx_h5_err *e)
{
    return open_file(path, H5F_ACC_RDWR, 1, e);
}

hid_t cfx_h5_create_memory(const char *path, cfx_h5_err *e)
{
    hid_t fapl = make_fapl(1);
    hid_t f = fapl < 0 ? -1 : H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (f < 0)
        cfx_h5_fail(e, "creating %s in memory", path);
    if (fapl >= 0)
        H5Pclose(fapl);
    return f;
}

/* Flushes a file or directory to the disk. EINVAL: the file system cannot
 * sync directories, nothing to do. */
static int sync_path(const char *file, int is_dir, cfx_h5_err *e)
{
    int fd = open(file, (is_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return cfx_h5_sys_fail(e, "opening", file);
    int rc = 0;
    if (fsync(fd) != 0 && !(is_dir && errno == EINVAL))
        rc = cfx_h5_sys_fail(e, "syncing", file);
    close(fd);
    return rc;
}

/* Writes len bytes to a new file tmp and syncs it. */
static int write_synced(const char *tmp, const char *buf, size_t len, cfx_h5_err *e)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return cfx_h5_sys_fail(e, "creating", tmp);
    int rc = 0;
    for (size_t done = 0; done < len && rc == 0;) {
        ssize_t n = write(fd, buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = ENOSPC;
            rc = cfx_h5_sys_fail(e, "writing", tmp);
        } else
            done += (size_t)n;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = cfx_h5_sys_fail(e, "syncing", tmp);
    if (close(fd) != 0 && rc == 0) /* network file systems report late errors here */
        rc = cfx_h5_sys_fail(e, "closing", tmp);
    if (rc)
        unlink(tmp);
    return rc;
}

/* Bob Jenkins' lookup3 hash, HDF5's metadata checksum. */
static uint32_t lookup3(const unsigned char *k, size_t length)
{
#define ROT(x, n) (((x) << (n)) ^ ((x) >> (32 - (n))))
    uint32_t a, b, c;
    a = b = c = 0xdeadbeef + (uint32_t)length;
    for (; length > 12; length -= 12, k += 12) {
        a += k[0] + ((uint32_t)k[1] << 8) + ((uint32_t)k[2] << 16) + ((uint32_t)k[3] << 24);
        b += k[4] + ((uint32_t)k[5] << 8) + ((uint32_t)k[6] << 16) + ((uint32_t)k[7] << 24);
        c += k[8] + ((uint32_t)k[9] << 8) + ((uint32_t)k[10] << 16) + ((uint32_t)k[11] << 24);
        a -= c, a ^= ROT(c, 4), c += b;
        b -= a, b ^= ROT(a, 6), a += c;
        c -= b, c ^= ROT(b, 8), b += a;
        a -= c, a ^= ROT(c, 16), c += b;
        b -= a, b ^= ROT(a, 19), a += c;
        c -= b, c ^= ROT(b, 4), b += a;
    }
    if (length == 0)
        return c;
    uint32_t tail[3] = {0, 0, 0};
    for (size_t i = 0; i < length; i++)
        tail[i / 4] += (uint32_t)k[i] << (8 * (i % 4));
    a += tail[0], b += tail[1], c += tail[2];
    c ^= b, c -= ROT(b, 14);
    a ^= c, a -= ROT(c, 11);
    b ^= a, b -= ROT(a, 25);
    c ^= b, c -= ROT(b, 16);
    a ^= c, a -= ROT(c, 4);
    b ^= a, b -= ROT(a, 14);
    c ^= b, c -= ROT(b, 24);
#undef ROT
    return c;
}

/* H5Fget_file_image before HDF5 1.14.7 clears the superblock's status
 * flags without updating its checksum (HDFGroup/hdf5 issue #1915), so the
 * image would not open. Version 2 and 3 superblocks: signature, version,
 * sizes, flags, four addresses, then the checksum of all that. */
static void fix_superblock_checksum(unsigned char *img, size_t size)
{
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    if (size < 12 || memcmp(img, sig, 8) != 0 || (img[8] != 2 && img[8] != 3))
        return;
    size_t len = 12 + 4 * (size_t)img[9];
    if (size < len + 4)
        return;
    img[11] = 0; /* not open anywhere */
    uint32_t sum = lookup3(img, len);
    for (int i = 0; i < 4; i++)
        img[len + (size_t)i] = (unsigned char)(sum >> (8 * i));
}

int cfx_h5_finish(hid_t f, int status, const char *path, cfx_h5_err *e)
{
    if (status == 0)
        return cfx_h5_save(f, path, e);
    H5Fclose(f);
    return status;
}

int cfx_h5_save(hid_t f, const char *path, cfx_h5_err *e)
{
    /* The complete file as bytes (metadata flushed into it first). */
    char *image = NULL;
    ssize_t size = -1;
    int rc = 0;
    if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0 || (size = H5Fget_file_image(f, NULL, 0)) <= 0)
        rc = cfx_h5_fail(e, "building the file in memory");
    else {
        image = cfx_malloc((size_t)size);
        if (H5Fget_file_image(f, image, (size_t)size) != size)
            rc = cfx_h5_fail(e, "building the file in memory");
        else
            fix_superblock_checksum((unsigned char *)image, (size_t)size);
    }
    if (H5Fclose(f) < 0 && rc == 0)
        rc = cfx_h5_fail(e, "closing the file in memory");
    char tmp[4096];
    if (rc == 0 && snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        rc = cfx_h5_sys_fail(e, "naming the temporary file of", path);
    }
    if (rc == 0)
        rc = write_synced(tmp, image, (size_t)size, e);
    free(image);
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = cfx_h5_sys_fail(e, "renaming it to", path);
        unlink(tmp);
    }
    if (rc)
        return -1;
    /* Make the rename itself durable. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0'; /* a file in "/" */
    else
        *slash = '\0';
    return sync_path(dir, 1, e);
}

/* ---- scalar attributes --------------------------------------------------- */

static int put_attr(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *value,
                    cfx_h5_err *e)
{
    if (H5Aexists(loc, name) > 0 && H5Adelete(loc, name) < 0)
        return cfx_h5_fail(e, "replacing attribute %s", name);
    hid_t space = H5Screate(H5S_SCALAR);
    if (space < 0)
        return cfx_h5_fail(e, "writing attribute %s", name);
    hid_t a = H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    int rc = 0;
    if (a < 0 || H5Awrite(a, mtype, value) < 0)
        rc = cfx_h5_fail(e, "writing attribute %s", name);
    if (a >= 0)
        H5Aclose(a);
    H5Sclose(space);
    return rc;
}

int cfx_h5_put_str(hid_t loc, const char *name, const char *value, cfx_h5_err *e)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0 || H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        cfx_h5_fail(e, "writing attribute %s", name);
        if (t >= 0)
            H5Tclose(t);
        return -1;
    }
    const char *v = value ? value : "";
    int rc = put_attr(loc, name, t, t, &v, e);
    H5Tclose(t);
    return rc;
}

int cfx_h5_put_i64(hid_t loc, const char *name, int64_t v, cfx_h5_err *e)
{
    return put_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v, e);
}

int cfx_h5_put_u64(hid_t loc, const char *name, uint64_t v, cfx_h5_err *e)
{
    return put_attr(loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v, e);
}

int cfx_h5_put_f64(hid_t loc, const char *name, double v, cfx_h5_err *e)
{
    return put_attr(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v, e);
}

/* Opens attribute name of loc; a missing one is reported in e. */
static hid_t open_attr(hid_t loc, const char *where, const char *name, cfx_h5_err *e)
{
    htri_t exists = H5Aexists(loc, name);
    if (exists < 0)
        return cfx_h5_fail(e, "reading attribute %s of %s", name, where);
    if (exists == 0) {
        snprintf(e->what, sizeof e->what, "reading %s", where);
        snprintf(e->cause, sizeof e->cause, "attribute %s is missing", name);
        return -1;
    }
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0)
        cfx_h5_fail(e, "reading attribute %s of %s", name, where);
    return a;
}

static int wrong_type(cfx_h5_err *e, const char *where, const char *name, const char *want)
{
    snprintf(e->what, sizeof e->what, "reading %s", where);
    snprintf(e->cause, sizeof e->cause, "attribute %s is not %s", name, want);
    return -1;
}

int cfx_h5_get_num(hid_t loc, const char *where, const char *name, hid_t mtype, void *value,
                   cfx_h5_err *e)
{
    hid_t a = open_attr(loc, where, name, e);
    if (a < 0)
        return -1;
    hid_t t = H5Aget_type(a);
    H5T_class_t c = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    int rc = 0;
    if (t < 0)
        rc = cfx_h5_fail(e, "reading attribute %s of %s", name, where);
    else if (c != H5T_INTEGER && c != H5T_FLOAT)
        rc = wrong_type(e, where, name, "a number");
    else if (H5Aread(a, mtype, value) < 0)
        rc = cfx_h5_fail(e, "reading attribute %s of %s", name, where);
    if (t >= 0)
        H5Tclose(t);
    H5Aclose(a);
    return rc;
}

int cfx_h5_get_str(hid_t loc, const char *where, const char *name, char **value, cfx_h5_err *e)
{
    hid_t a = open_attr(loc, where, name, e);
    if (a < 0)
        return -1;
    hid_t ft = H5Aget_type(a);
    int rc = 0;
    if (ft < 0)
        rc = cfx_h5_fail(e, "reading attribute %s of %s", name, where);
    else if (H5Tget_class(ft) != H5T_STRING)
        rc = wrong_type(e, where, name, "a string");
    else if (H5Tis_variable_str(ft) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        char *s = NULL;
        if (mt < 0 || H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Tset_cset(mt, H5Tget_cset(ft)) < 0 ||
            H5Aread(a, mt, &s) < 0)
            rc = cfx_h5_fail(e, "reading attribute %s of %s", name, where);
        else {
            size_t len = s ? strlen(s) : 0;
            *value = cfx_malloc(len + 1);
            memcpy(*value, s ? s : "", len + 1);
        }
        if (s)
            H5free_memory(s);
        if (mt >= 0)
            H5Tclose(mt);
    } else {
        size_t size = H5Tget_size(ft);
        char *s = cfx_calloc(size + 1, 1); /* one byte longer: always terminated */
        if (H5Aread(a, ft, s) < 0) {
            rc = cfx_h5_fail(e, "reading attribute %s of %s", name, where);
            free(s);
        } else
            *value = s;
    }
    if (ft >= 0)
        H5Tclose(ft);
    H5Aclose(a);
    return rc;
}
