/* The layer table: one row (cfx_layer_kind) per layer type, defined in
 * src/nn/<type>.c and listed in src/nn/layers.c. A row says everything the
 * rest of cfx needs to know about its type: its name in configs and in
 * PyTorch, its options, shape inference, its parameters and buffers, forward,
 * backward, FLOPs and the attributes written into checkpoints. The model, the
 * config parser, the checkpoint code, cfx-viz and the benchmark loop over the
 * table and never ask for a type by name. Adding a layer type is one new file
 * plus one row in src/nn/layers.c. */
#ifndef CFX_LAYERS_H
#define CFX_LAYERS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cfx/common.h" /* defines: cfx_error */

#define CFX_MAX_LAYERS 256 /* entries of a layer list (a block counts once) */
#define CFX_NAME_LEN 48    /* layer names, "layer2.0.downsample.0" */
#define CFX_MAX_INPUTS 2
#define CFX_MAX_TENSORS 5 /* parameters and buffers of one layer */

struct cfx_layer_kind;
struct cfx_layer;
struct cfx_model;

/* One entry of model.layers, e.g. "conv2d out=16 kernel=3 padding=1". The
 * option fields are shared by all types; each type's option table says
 * which it reads. */
typedef struct {
    const struct cfx_layer_kind *kind;
    char name[CFX_NAME_LEN];                   /* "" = unnamed (keys use the index) */
    char inputs[CFX_MAX_INPUTS][CFX_NAME_LEN]; /* layer names or "-k" ("" = previous) */
    int n_inputs;                              /* given with in=; 0 = the previous layer */
    int out, kernel, stride, padding;          /* integer options */
    int bias, affine, sync, dirac, identity, whiten; /* boolean options */
    double eps, momentum, scale;               /* real options */
    /* every layer: its parameters' learning-rate and weight-decay multipliers
     * (parameter groups; trainable=false sets both to 0); trainable=bias:
     * only tensors named "bias" train, the others keep their initial values;
     * train_epochs=N: they train in epochs 1..N only, then freeze (0 = always) */
    double lr_scale, decay_scale;
    int bias_only, train_epochs;
} cfx_layer_spec;

/* One option of a layer type: a field of cfx_layer_spec. */
typedef enum { CFX_OPT_INT, CFX_OPT_BOOL, CFX_OPT_REAL } cfx_option_type;
enum {
    CFX_OPT_REQUIRED = 1, /* must be given (and be >= min) */
    CFX_OPT_SHOWN = 2,    /* always printed, even at its default */
};
typedef struct {
    const char *name; /* "out" */
    cfx_option_type type;
    size_t offset; /* offsetof(cfx_layer_spec, field) */
    double def, min, max;
    int flags;
    const char *placeholder; /* "N" in "needs out=N" */
} cfx_layer_option;

/* Shape of a layer's per-image input or output. Spatial tensors are stored
 * [C][N][H][W], flat ones [N][C] (h = w = 1). */
typedef struct {
    int c, h, w;
    int flat;
} cfx_shape;

/* A parameter or buffer of a layer, as in PyTorch's state_dict. */
typedef enum {
    CFX_TENSOR_PARAM,  /* trained: float in params, gradient in grads */
    CFX_TENSOR_BUFFER, /* not trained: float in buffers (running_mean, running_var) */
    CFX_TENSOR_COUNT,  /* not trained: int64 in counts (num_batches_tracked) */
} cfx_tensor_store;
typedef enum {
    CFX_INIT_FAN_IN, /* U(+-1/sqrt(fan_in)), PyTorch's default for conv and linear */
    CFX_INIT_ZERO,
    CFX_INIT_ONE,
    CFX_INIT_DIRAC, /* torch.nn.init.dirac_: a convolution that passes its input through */
    CFX_INIT_IDENTITY, /* FAN_IN, then dirac_ on the first in_channels filters (airbench) */
} cfx_tensor_init;
typedef struct {
    char suffix[24]; /* "weight": the key is "<layer name>.weight" */
    cfx_tensor_store store;
    cfx_tensor_init init;
    int rank; /* 0 = scalar */
    int dims[4];
    size_t offset; /* into params, buffers or counts, set by the model */
    size_t count;
} cfx_tensor;

/* An attribute written beside a layer's tensors in checkpoints. */
typedef struct {
    const char *name;
    double value;
    int is_int;
} cfx_attr;
#define CFX_MAX_ATTRS 8
#define CFX_MAX_SUMS(channels) (2 * (channels) + 1) /* doubles of one phase of sums */

/* Flags of a layer type. */
enum {
    CFX_KIND_RELU = 1,                /* a ReLU: may run in place inside the layer before */
    CFX_KIND_FUSES_RELU = 2,          /* forward can apply a following ReLU itself */
    CFX_KIND_FOLDS_RELU_BACKWARD = 4, /* backward can apply a preceding in-place ReLU's mask */
};

/* A macro (a block such as "basicblock") expands into layers whose names
 * are relative to the block's; the input name "@in" is the block's input. */
#define CFX_BLOCK_INPUT "@in"
#define CFX_MAX_EXPANSION 16

typedef struct cfx_layer_kind {
    const char *name;       /* in configs: "conv2d" */
    const char *torch_name; /* PyTorch module class: "Conv2d" */
    const char *help;       /* one line for the config reference */
    const cfx_layer_option *options;
    int n_options;
    int n_inputs; /* 1, or 2 (add) */
    int flags;
    /* After parsing: derived defaults and checks between options (may be NULL). */
    int (*finish)(cfx_layer_spec *s, cfx_error *err);
    /* Macros only: the layers of the block for an input of shape in. */
    int (*expand)(const cfx_layer_spec *s, const cfx_shape *in, cfx_layer_spec *out,
                  cfx_error *err);
    /* Output shape, tensors (cfx_layer_add_tensor), fan_in and workspace of
     * a layer whose inputs have shapes in[0..n_inputs). Errors name the problem
     * only; the model adds which layer it is. */
    int (*infer)(struct cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err);
    /* Forward over n images: reads cfx_layer_input(m, L, k), writes cfx_layer_output. */
    void (*forward)(struct cfx_model *m, struct cfx_layer *L, int n);
    /* Backward over n images: overwrites its parameter gradients and din[k]
     * (the gradient of input k; NULL when not needed) from the output's gradient. */
    void (*backward)(struct cfx_model *m, struct cfx_layer *L, int n, float *const *din);
    /* Layers that need sums over the whole batch (BatchNorm in training): the
     * model asks for this replica's local sums of phase p (forward phases
     * 0 .. n_forward_sums - 1, then backward phases), adds them up over every
     * image of the batch (all ranks, all chunks), and hands the totals to
     * sums_done before forward (or backward) runs. sums returns how many
     * doubles it wrote, as a negative count if they must not be summed over
     * ranks (sync=false), 0 for nothing to do in this mode. May be NULL. */
    int (*sums)(struct cfx_model *m, struct cfx_layer *L, int n, int phase, double *out);
    void (*sums_done)(struct cfx_model *m, struct cfx_layer *L, int phase, const double *total);
    int n_forward_sums, n_backward_sums;
    /* Multiply-adds of one image's forward pass, times 2 (may be NULL: none). */
    double (*flops)(const struct cfx_layer *L);
    /* Attributes describing the layer as its PyTorch module's arguments. */
    int (*attrs)(const struct cfx_layer *L, cfx_attr *out);
} cfx_layer_kind;

/* The table (src/nn/layers.c), in the order the config reference lists them. */
extern const cfx_layer_kind *const cfx_layer_kinds[];
extern const int cfx_n_layer_kinds;

/* The type with this config name, or NULL. */
const cfx_layer_kind *cfx_layer_kind_find(const char *name);

/* The options every layer takes besides its own (name=, in=). */
#define CFX_COMMON_OPTIONS                                                                         \
    "name=NAME in=A[,B] [lr_scale=X] [decay_scale=X] [trainable=false|bias] [train_epochs=N]"

/* Parses a layer list: entries separated by ';' or newlines. */
int cfx_parse_layers(const char *text, cfx_layer_spec *layers, int *n_layers, cfx_error *err);

/* Formats one layer as it would be written in a config ("conv2d out=16 ..."). */
void cfx_layer_spec_format(const cfx_layer_spec *layer, char *buf, size_t len);

/* A spec of the given type with every option at its default. */
void cfx_layer_spec_default(cfx_layer_spec *s, const cfx_layer_kind *kind);

/* One line per type: its syntax and options (for the config reference). */
void cfx_layer_kinds_help(char *buf, size_t len);

#endif
