/* libFuzzer harness of the CIFAR-10 reader (src/data): the input is one
 * batch file for cfx_dataset_open; when it is accepted, the images go
 * through the split and batch assembly with augmentation, as in training. */
#include <stdint.h>
#include <stdlib.h>

#include "cfx/data.h"  /* defines: cfx_dataset_open, cfx_split_make, cfx_batch_fill */
#include "fuzz_util.h" /* defines: fuzz_scratch_file */

#define MAX_IMAGES 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_scratch_file("cifar10", ".bin", data, size);
    cfx_dataset ds;
    cfx_error err = {{0}};
    /* Exactly one record expected, then any whole number of records. */
    if (cfx_dataset_open(&ds, &path, 1, 1, &err) == 0)
        cfx_dataset_close(&ds);
    if (cfx_dataset_open(&ds, &path, 1, 0, &err) != 0)
        return 0;
    int n = ds.n < MAX_IMAGES ? ds.n : MAX_IMAGES;
    static float images[MAX_IMAGES * CFX_IMAGE_PIXELS];
    int labels[MAX_IMAGES], indices[MAX_IMAGES];
    for (int i = 0; i < n; i++)
        indices[i] = ds.n - 1 - i;
    cfx_augment aug = {1, size, (int)(data[0] % 7), CFX_CROP_PADDING, data[0] & 1, CFX_FLIP_RANDOM};
    cfx_batch_fill(images, labels, &ds, indices, n, &aug);
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= CFX_NUM_CLASSES)
            abort(); /* the reader let a bad label through */
    cfx_split split;
    long val_size = 1 + (long)(data[size / 2] % (unsigned)ds.n);
    if (cfx_split_make(&split, ds.n, val_size, data[1 % size], data[2 % size] % 3,
                       data[3 % size] % 3, &err) == 0)
        cfx_split_free(&split);
    cfx_dataset_close(&ds);
    return 0;
}
