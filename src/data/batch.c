/* Mini-batch assembly: normalisation, random translation + flip, fixed views, network layout. */
#include "cfx/data.h" /* defines: cfx_batch_fill, cfx_augment_draw */

#include <string.h>

#include "cfx/rng.h" /* defines: cfx_hash3 */

const float CFX_CIFAR10_MEAN[CFX_IMAGE_CHANNELS] = {0.4914f, 0.4822f, 0.4465f};
const float CFX_CIFAR10_STD[CFX_IMAGE_CHANNELS] = {0.2470f, 0.2435f, 0.2616f};

static uint64_t augment_bits(const cfx_augment *aug, int epoch, int index)
{
    return cfx_hash3(aug->seed ^ 0x4155474DULL /* "AUGM" */, (uint64_t)epoch, (uint64_t)index);
}

void cfx_augment_draw(const cfx_augment *aug, int index, int *dy, int *dx, int *flip)
{
    uint64_t r = augment_bits(aug, aug->epoch, index);
    int span = 2 * aug->padding + 1;
    *dy = (int)(r % (uint64_t)span);
    *dx = (int)((r >> 16) % (uint64_t)span);
    *flip = (int)((r >> 32) & 1);
    if (aug->flip == CFX_FLIP_NONE)
        *flip = 0;
    else if (aug->flip == CFX_FLIP_ALTERNATING && aug->epoch > 1) /* epoch 1's, alternating */
        *flip = (int)((augment_bits(aug, 1, index) >> 32) & 1) ^ ((aug->epoch - 1) & 1);
}

/* (x / 255 - mean) / std for every byte value, as ToTensor + Normalize. */
static void normalise_table(float lut[CFX_IMAGE_CHANNELS][256])
{
    for (int c = 0; c < CFX_IMAGE_CHANNELS; c++)
        for (int v = 0; v < 256; v++)
            lut[c][v] = ((float)v / 255.0f - CFX_CIFAR10_MEAN[c]) / CFX_CIFAR10_STD[c];
}

/* A source coordinate outside 0..S-1: -1 (zero fill) or its reflection. */
static int outside(int s, int reflect)
{
    enum { S = CFX_IMAGE_SIZE };
    if (!reflect)
        return -1;
    s = s < 0 ? -s : s;
    return s >= S ? 2 * (S - 1) - s : s;
}

/* Image i of a batch of n in view v, from its record's pixels px. */
static void fill_image(float *out, int n, int i, const uint8_t *px,
                       const float lut[CFX_IMAGE_CHANNELS][256], const cfx_view *v)
{
    enum { S = CFX_IMAGE_SIZE, HW = S * S };
    for (int c = 0; c < CFX_IMAGE_CHANNELS; c++) {
        const uint8_t *plane = px + c * HW;
        float *dst = out + ((size_t)c * (size_t)n + (size_t)i) * HW;
        const float *l = lut[c];
        for (int y = 0; y < S; y++) {
            int sy = y + v->dy; /* source row in the unpadded image */
            float *row = dst + y * S;
            if (sy < 0 || sy >= S)
                sy = outside(sy, v->reflect);
            if (sy < 0) {
                for (int x = 0; x < S; x++)
                    row[x] = l[0]; /* zero padding is a black pixel */
                continue;
            }
            for (int x = 0; x < S; x++) {
                int ox = v->flip ? S - 1 - x : x; /* flip after the crop */
                int sx = ox + v->dx;
                if (sx < 0 || sx >= S)
                    sx = outside(sx, v->reflect);
                row[x] = sx < 0 ? l[0] : l[plane[sy * S + sx]];
            }
        }
    }
}

void cfx_batch_fill(float *out, int *labels, const cfx_dataset *ds, const int *indices, int n,
                    const cfx_augment *aug)
{
    float lut[CFX_IMAGE_CHANNELS][256];
    normalise_table(lut);
    const int on = aug && aug->enabled, P = on ? aug->padding : 0;
    for (int i = 0; i < n; i++) {
        int idx = indices[i];
        uint8_t buf[CFX_RECORD_BYTES];
        const uint8_t *record = cfx_dataset_read(ds, idx, buf);
        labels[i] = record[0];
        int dy = P, dx = P, flip = 0;
        if (on)
            cfx_augment_draw(aug, idx, &dy, &dx, &flip);
        cfx_view v = {dy - P, dx - P, flip, on && aug->reflect, 1.0f};
        fill_image(out, n, i, record + 1, lut, &v);
    }
}

void cfx_batch_fill_view(float *out, int *labels, const cfx_dataset *ds, const int *indices,
                         int n, const cfx_view *view)
{
    float lut[CFX_IMAGE_CHANNELS][256];
    normalise_table(lut);
    for (int i = 0; i < n; i++) {
        uint8_t buf[CFX_RECORD_BYTES];
        const uint8_t *record = cfx_dataset_read(ds, indices[i], buf);
        labels[i] = record[0];
        fill_image(out, n, i, record + 1, lut, view);
    }
}

int cfx_tta_views(const char *name, cfx_view *views)
{
    int n = 0;
    if (!strcmp(name, "none")) {
        views[n++] = (cfx_view){0, 0, 0, 1, 1.0f};
    } else if (!strcmp(name, "flip") || !strcmp(name, "flip_translate")) {
        /* airbench: half the image and its mirror, half the four shifted views */
        int shifts = !strcmp(name, "flip") ? 1 : 3;
        const int d[3] = {0, -1, 1};
        for (int s = 0; s < shifts; s++)
            for (int f = 0; f < 2; f++)
                views[n++] = (cfx_view){d[s], d[s], f, 1,
                                        shifts == 1 ? 0.5f
                                        : s == 0    ? 0.25f
                                                    : 0.125f};
    }
    return n;
}
