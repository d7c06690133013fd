/* CIFAR-10 in its official binary layout, the train/validation split and
 * mini-batch assembly (normalisation and augmentation).
 *
 * The batch files are memory-mapped read-only, so ranks on one node share a
 * single copy of the data through the page cache. */
#ifndef CFX_DATA_H
#define CFX_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "cfx/common.h" /* defines: cfx_error */

#define CFX_IMAGE_CHANNELS 3
#define CFX_IMAGE_SIZE 32
#define CFX_IMAGE_PIXELS (CFX_IMAGE_CHANNELS * CFX_IMAGE_SIZE * CFX_IMAGE_SIZE) /* 3072 */
#define CFX_RECORD_BYTES (1 + CFX_IMAGE_PIXELS)                                   /* 3073 */
#define CFX_RECORDS_PER_FILE 10000
#define CFX_NUM_CLASSES 10
#define CFX_MAX_DATA_FILES 8

extern const char *const CFX_CIFAR10_CLASSES[CFX_NUM_CLASSES];
extern const float CFX_CIFAR10_MEAN[CFX_IMAGE_CHANNELS];
extern const float CFX_CIFAR10_STD[CFX_IMAGE_CHANNELS];

/* Images from one or more batch files; record i is a label byte followed by
 * 1,024 red, 1,024 green and 1,024 blue bytes, each plane row-major. */
typedef struct {
    int n;
    const uint8_t **records;
    int n_maps;
    void *maps[CFX_MAX_DATA_FILES];
    size_t map_len[CFX_MAX_DATA_FILES];
    int fds[CFX_MAX_DATA_FILES];         /* the open files, for cfx_dataset_read */
    long first[CFX_MAX_DATA_FILES + 1]; /* index of each file's first record */
} cfx_dataset;

/* Maps the given batch files; each must hold exactly records_per_file
 * records with labels 0..9 (records_per_file 0 = any whole number). */
int cfx_dataset_open(cfx_dataset *ds, const char *const *paths, int n_files,
                     long records_per_file, cfx_error *err);
/* data_batch_1..5.bin of dir: 50,000 images. */
int cfx_cifar10_open_train(cfx_dataset *ds, const char *dir, cfx_error *err);
/* test_batch.bin of dir: 10,000 images. */
int cfx_cifar10_open_test(cfx_dataset *ds, const char *dir, cfx_error *err);
void cfx_dataset_close(cfx_dataset *ds);
/* Record i (label byte + 3,072 pixel bytes) read with pread into record,
 * which it returns. Training reads this way rather than through the mapping:
 * the data then lives once in the node's page cache, shared by its ranks,
 * and not in any rank's resident set (touching the mapping would add the
 * pages, and 16 neighbours each, to the RSS of every rank). */
const uint8_t *cfx_dataset_read(const cfx_dataset *ds, int i, uint8_t *record);

static inline int cfx_dataset_label(const cfx_dataset *ds, int i) { return ds->records[i][0]; }
static inline const uint8_t *cfx_dataset_pixels(const cfx_dataset *ds, int i)
{
    return ds->records[i] + 1;
}

/* The fixed train/validation split: one seeded permutation of n_total
 * indices; the last val_size of it are validation. Limits keep only the
 * first K of each part (0 = all). */
typedef struct {
    int *train;
    int n_train;
    int *val;
    int n_val;
} cfx_split;

int cfx_split_make(cfx_split *split, int n_total, long val_size, uint64_t seed, long train_limit,
                   long val_limit, cfx_error *err);
void cfx_split_free(cfx_split *split);

/* Training augmentation: a random translation by up to `padding` pixels
 * each way (RandomCrop(32, padding) with zero fill, or reflection), then a
 * horizontal flip, drawn from (seed, epoch, image index) alone. The seed
 * recipe: padding 4, zero fill, random flips. */
typedef enum {
    CFX_FLIP_RANDOM,      /* p = 0.5 in every epoch */
    CFX_FLIP_ALTERNATING, /* random in epoch 1, then each image flipped in alternate epochs */
    CFX_FLIP_NONE,
} cfx_flip_mode;
typedef struct {
    int enabled;
    uint64_t seed;
    int epoch;
    int padding; /* 0..CFX_MAX_PADDING */
    int reflect; /* fill with the reflection instead of black */
    cfx_flip_mode flip;
} cfx_augment;

#define CFX_MAX_PADDING 8
#define CFX_CROP_PADDING 4

/* The crop offsets (0..2 padding) and flip bit used for image `index` in `epoch`. */
void cfx_augment_draw(const cfx_augment *aug, int index, int *dy, int *dx, int *flip);

/* Writes images ds[indices[0..n)] normalised into out, in the network's
 * input layout [channel][image][row][col] (see include/cfx/nn.h), and their
 * labels into labels. aug may be NULL (no augmentation). Reads with
 * cfx_dataset_read. */
void cfx_batch_fill(float *out, int *labels, const cfx_dataset *ds, const int *indices, int n,
                    const cfx_augment *aug);

/* A fixed view of an image: output pixel (y, x) shows source pixel
 * (y + dy, x' + dx) where x' = x, or 31 - x when flipped (the flip comes
 * after the shift, as RandomCrop then flip); outside the image, zero
 * (a black pixel) or the reflection (PyTorch's reflect padding). */
typedef struct {
    int dy, dx, flip, reflect;
    float weight; /* its share of the test-time-augmented logits (cfx_tta_views) */
} cfx_view;

/* cfx_batch_fill with the same view for every image. */
void cfx_batch_fill_view(float *out, int *labels, const cfx_dataset *ds, const int *indices,
                         int n, const cfx_view *view);

#define CFX_MAX_VIEWS 6
/* The test-time augmentation views named by train.tta: none (the image),
 * flip (and its mirror image, 1/2 each), flip_translate (both, each also
 * shifted by one pixel up-left and down-right with reflection: 6 views; as
 * airbench's, the unshifted pair weighs 1/4 each and the four shifted views
 * 1/8). Returns their number, 0 for an unknown name. */
int cfx_tta_views(const char *name, cfx_view *views);

#endif
