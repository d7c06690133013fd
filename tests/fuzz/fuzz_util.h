/* Shared by the fuzz harnesses of tests/fuzz: the readers under test take a
 * path, so each input is written to a per-process scratch file first. */
#ifndef CFX_FUZZ_UTIL_H
#define CFX_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Writes data to /tmp/cfx_fuzz_<name>_<pid><suffix> and returns that path
 * (static storage); aborts if the scratch file cannot be written, since the
 * harness would then test nothing. */
static inline const char *fuzz_scratch_file(const char *name, const char *suffix,
                                            const uint8_t *data, size_t size)
{
    static char path[256];
    snprintf(path, sizeof path, "/tmp/cfx_fuzz_%s_%ld%s", name, (long)getpid(), suffix);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(path);
        abort();
    }
    return path;
}

#endif
