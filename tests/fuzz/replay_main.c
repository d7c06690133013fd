/* main() for the fuzz harnesses when the compiler has no libFuzzer (gcc):
 * runs LLVMFuzzerTestOneInput once on every file named on the command line
 * or found in a directory named there, so CI replays the committed corpora
 * with any compiler. Arguments starting with '-' (libFuzzer flags) are
 * ignored. Exit 0 after all inputs ran; a crash of the harness is a failure.
 * Like libFuzzer's -malloc_limit_mb, a single allocation of more than
 * 1 GiB aborts (outside sanitizer builds, whose allocator this would
 * replace): a reader must not trust a size field of its input that far. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#if !defined(__SANITIZE_ADDRESS__) && defined(__GLIBC__)
#define MALLOC_LIMIT ((size_t)1 << 30)
void *__libc_malloc(size_t size);
void *__libc_calloc(size_t count, size_t size);
void *__libc_realloc(void *p, size_t size);

static void over_limit(size_t size)
{
    static const char msg[] = "replay: allocation of more than 1 GiB (malloc limit)\n";
    (void)size;
    ssize_t written = write(2, msg, sizeof msg - 1);
    (void)written;
    abort();
}

void *malloc(size_t size)
{
    if (size > MALLOC_LIMIT)
        over_limit(size);
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size)
{
    if (size && count > MALLOC_LIMIT / size)
        over_limit(count * size);
    return __libc_calloc(count, size);
}

void *realloc(void *p, size_t size)
{
    if (size > MALLOC_LIMIT)
        over_limit(size);
    return __libc_realloc(p, size);
}
#endif

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    for (size_t n; buf && (n = fread(buf + len, 1, cap - len, f)) > 0;) {
        len += n;
        if (len == cap) {
            uint8_t *grown = realloc(buf, cap *= 2);
            if (!grown)
                free(buf);
            buf = grown;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "%s: out of memory\n", path);
        return -1;
    }
    /* An exact-size copy, so that reading past the input is caught by ASan. */
    uint8_t *input = malloc(len ? len : 1);
    if (!input) {
        free(buf);
        return -1;
    }
    memcpy(input, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(input, len);
    free(input);
    return 0;
}

int main(int argc, char **argv)
{
    int ran = 0, failed = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            continue;
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            failed = 1;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed |= replay_file(argv[i]) != 0;
            ran++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) {
            perror(argv[i]);
            failed = 1;
            continue;
        }
        for (struct dirent *e; (e = readdir(d));) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            if (e->d_name[0] == '.' || stat(path, &st) != 0 || !S_ISREG(st.st_mode))
                continue;
            failed |= replay_file(path) != 0;
            ran++;
        }
        closedir(d);
    }
    printf("replayed %d inputs%s\n", ran, failed ? " (some could not be read)" : "");
    return failed || ran == 0;
}
