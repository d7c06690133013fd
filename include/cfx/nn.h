/* Layers (forward and backward as plain functions over flat float arrays)
 * and the sequential model that chains them.
 *
 * Activation layout. Spatial activations are stored [C][N][H][W]: channel
 * major, then image. A convolution over the whole mini-batch is then one
 * GEMM, out[OC][N*OH*OW] = W[OC][C*K*K] x col[C*K*K][N*OH*OW], with no
 * transposes. After `flatten` activations are [N][F], row per image, as in
 * PyTorch; flatten orders features (c, h, w) like torch.flatten. With N = 1
 * both layouts equal PyTorch's NCHW.
 *
 * Parameters of all layers live in one flat buffer, gradients in another of
 * the same layout: one allreduce, one optimizer loop, one checkpoint loop.
 * Buffers (BatchNorm's running statistics) sit beside them, never trained. */
#ifndef CFX_NN_H
#define CFX_NN_H

#include <stddef.h>
#include <stdint.h>

#include "cfx/common.h" /* defines: cfx_error */
#include "cfx/layers.h" /* defines: cfx_layer_kind, cfx_layer_spec, cfx_tensor */

/* ---- layer kernels ---------------------------------------------------- */

/* Output size of a convolution or pooling window along one axis. */
static inline int cfx_window_out(int in, int kernel, int stride, int padding)
{
    return (in + 2 * padding - kernel) / stride + 1;
}

/* col[C*K*K][N*OH*OW] from in[C][N][H][W] (zeros outside the image). */
void cfx_im2col(float *col, const float *in, int N, int C, int H, int W, int K, int stride, int pad,
                int OH, int OW);
/* in[C][N][H][W] += the columns of col (the adjoint of cfx_im2col). */
void cfx_col2im(float *in, const float *col, int N, int C, int H, int W, int K, int stride, int pad,
                int OH, int OW);

/* Bytes of im2col workspace a convolution uses at once: the mini-batch is
 * processed in chunks of images whose columns fit this budget, so the im2col
 * matrix stays in cache between its writing and the GEMM that reads it. */
#define CFX_CONV_CHUNK_BYTES (256 * 1024)
/* ...but at least this many columns (images x output pixels), so the GEMMs
 * of small feature maps (7x7, 3x3) are not too narrow to run at speed. */
#ifndef CFX_CONV_MIN_COLS
#define CFX_CONV_MIN_COLS 256
#endif

/* Images per chunk for a convolution over N images (at least 1). */
int cfx_conv2d_chunk(int N, int C, int K, int OH, int OW);

/* Eigenvalues (ascending, into eigval[n]) and eigenvectors of the symmetric
 * a[n][n], whose upper triangle (row-major) is read; afterwards row j of a
 * is the eigenvector of eigval[j]. LAPACK dsyev; returns its info (0 = ok). */
int cfx_eigen_symmetric(double *a, int n, double *eigval);

/* Whitening init (conv2d whiten=true, src/nn/whiten.c): weight[OC][C][K][K]
 * from the K x K patches of images[C][N][H][W]: filter f < D = C K K is the
 * eigenvector of the patch covariance with the f-th largest eigenvalue l,
 * divided by sqrt(l + eps); filter D + f is its negative. OC must be 2 D. */
#define CFX_WHITEN_IMAGES 5000 /* training images the covariance is taken over */
#define CFX_WHITEN_EPS 5e-4
int cfx_whiten_weights(float *weight, int OC, const float *images, int N, int C, int H, int W,
                       int K, double eps, cfx_error *err);

/* out[OC][N][OH][OW] = conv(in[C][N][H][W], weight[OC][C][K][K]) + bias[OC].
 * col is workspace of C*K*K * chunk*OH*OW floats (chunk = cfx_conv2d_chunk),
 * used by the first of the cfx_threads() threads; the others keep their own. */
void cfx_conv2d_forward(float *out, float *col, const float *in, const float *weight,
                        const float *bias, int N, int C, int H, int W, int OC, int K, int stride,
                        int pad);
/* The same followed by ReLU, applied while each chunk is still in cache. */
void cfx_conv2d_relu_forward(float *out, float *col, const float *in, const float *weight,
                             const float *bias, int N, int C, int H, int W, int OC, int K,
                             int stride, int pad);
/* Gradients of the convolution of `in` given dout: dweight and dbias are
 * overwritten; din is overwritten. Any of the three may be NULL (not
 * computed; cfx-viz needs only din). col and dcol are workspaces
 * of the size cfx_conv2d_forward's col has. */
void cfx_conv2d_backward(float *din, float *dweight, float *dbias, float *col, float *dcol,
                         const float *dout, const float *in, const float *weight, int N, int C,
                         int H, int W, int OC, int K, int stride, int pad);

/* Direct AVX-512 convolution (src/nn/conv2d_direct.c) for stride-1 "same"
 * convolutions with K odd <= CFX_DIRECT_MAX_K and H*W a multiple of 16, on
 * CPUs with AVX-512 (CFX_CONV=gemm in the environment turns it off). The
 * conv2d functions above use it by themselves when it is usable. */
#define CFX_DIRECT_MAX_K 7
int cfx_conv2d_direct_usable(int N, int H, int W, int K, int stride, int pad);
/* Turns the direct kernels on (if the CPU has AVX-512) or off; returns whether on. */
int cfx_conv2d_use_direct(int on);
/* out = conv(in) + bias (bias may be NULL), then ReLU if relu. 0 or -1 (no memory). */
int cfx_conv2d_direct_forward(float *out, const float *in, const float *weight, const float *bias,
                              int N, int C, int H, int W, int OC, int K, int relu);
/* dweight = the weight gradient (overwritten). 0 or -1. */
int cfx_conv2d_direct_weight_grad(float *dweight, const float *dout, const float *in, int N, int C,
                                  int H, int W, int OC, int K);
/* din = the input gradient (overwritten). 0 or -1. */
int cfx_conv2d_direct_input_grad(float *din, const float *dout, const float *weight, int N, int C,
                                 int H, int W, int OC, int K);

void cfx_relu_forward(float *out, const float *in, size_t n);
/* din = dout where out > 0, else 0. */
void cfx_relu_backward(float *din, const float *dout, const float *out, size_t n);
/* Guided backpropagation's rule (Springenberg et al. 2015): din = dout where
 * out > 0 and dout > 0, else 0. */
void cfx_relu_guided_backward(float *din, const float *dout, const float *out, size_t n);

/* Max pooling without padding over `planes` planes of H x W (floor mode);
 * ties go to the first maximum in row-major window order, as PyTorch. */
void cfx_maxpool_forward(float *out, const float *in, int planes, int H, int W, int K, int stride);
void cfx_maxpool_backward(float *din, const float *dout, const float *in, int planes, int H, int W,
                          int K, int stride);
/* The same for a pool whose input is a ReLU output, with the ReLU's backward
 * folded in: the gradient reaches the window's maximum only if it is > 0. */
void cfx_maxpool_relu_backward(float *din, const float *dout, const float *in, int planes, int H,
                               int W, int K, int stride);

/* out = GELU(in) with the exact erf form (PyTorch's default). */
void cfx_gelu_forward(float *out, const float *in, size_t n);
/* din = dout * GELU'(in). */
void cfx_gelu_backward(float *din, const float *dout, const float *in, size_t n);
/* The guided rule carried over to GELU: din = dout * GELU'(x) where x > 0 and
 * dout > 0, else 0. */
void cfx_gelu_guided_backward(float *din, const float *dout, const float *in, size_t n);

/* Global average pooling: out[C][N] = mean of each H*W plane of in[C][N][HW]. */
void cfx_avgpool_forward(float *out, const float *in, size_t planes, int HW);
void cfx_avgpool_backward(float *din, const float *dout, size_t planes, int HW);

/* BatchNorm over in[C][N*HW]: per channel c, out = (in - mean[c]) * invstd[c]
 * * gamma[c] + beta[c] (gamma, beta NULL: 1 and 0). */
void cfx_batchnorm_apply(float *out, const float *in, const double *mean, const double *invstd,
                         const float *gamma, const float *beta, int C, size_t NHW);
/* sums[c] = sum of plane c of in[C][NHW] (and, if mean is not NULL, the
 * sum of squares about mean[c] instead). */
void cfx_batchnorm_sums(double *sums, const float *in, const double *mean, int C, size_t NHW);
/* Per channel: sdy[c] = sum dout, sdyx[c] = sum dout * xhat with xhat =
 * (in - mean) * invstd. */
void cfx_batchnorm_grad_sums(double *sdy, double *sdyx, const float *dout, const float *in,
                             const double *mean, const double *invstd, int C, size_t NHW);
/* din = gamma * invstd * (dout - a[c] - xhat * b[c]), with a = mean of dout and
 * b = mean of dout * xhat over the batch statistics' images (0 in eval mode). */
void cfx_batchnorm_input_grad(float *din, const float *dout, const float *in, const double *mean,
                              const double *invstd, const float *gamma, const double *a,
                              const double *b, int C, size_t NHW);

/* [C][N][HW] <-> [N][C*HW]. */
void cfx_flatten_forward(float *out, const float *in, int N, int C, int HW);
void cfx_flatten_backward(float *din, const float *dout, int N, int C, int HW);

/* out[N][out_f] = in[N][in_f] x weight[out_f][in_f]^T + bias[out_f]. */
void cfx_linear_forward(float *out, const float *in, const float *weight, const float *bias, int N,
                        int in_f, int out_f);
/* dweight, dbias overwritten; din (may be NULL) overwritten. */
void cfx_linear_backward(float *din, float *dweight, float *dbias, const float *dout,
                         const float *in, const float *weight, int N, int in_f, int out_f);

/* Softmax cross-entropy of logits[N][K] with labels. Adds the summed loss
 * and the number of correct argmax predictions to *loss_sum and *correct.
 * If dlogits is not NULL, writes (softmax - onehot) * scale into it; scale
 * is 1 / (global batch size) so that summing over ranks gives the mean. */
void cfx_softmax_xent(const float *logits, const int *labels, int N, int K, float scale,
                      float *dlogits, double *loss_sum, long *correct);
/* The same with label smoothing eps (torch's cross_entropy(label_smoothing=eps)):
 * the target is (1 - eps) onehot + eps / K. eps = 0 is cfx_softmax_xent. */
void cfx_softmax_xent_smooth(const float *logits, const int *labels, int N, int K, double eps,
                             float scale, float *dlogits, double *loss_sum, long *correct);

/* ---- the model: a list of layers, each reading earlier layers' outputs -- */

typedef struct cfx_layer {
    cfx_layer_spec spec;
    const cfx_layer_kind *kind;
    int index;              /* position in cfx_model.layers */
    char key[CFX_NAME_LEN]; /* state_dict prefix: the name, or the index */
    int n_inputs;
    int input[CFX_MAX_INPUTS];           /* producing layer, -1 = the model's input */
    int in_c, in_h, in_w;                /* per-image shape of input 0 */
    int out_c, out_h, out_w;             /* per-image output shape; flat outputs have h = w = 1 */
    int flat_out;                        /* output in [N][F] layout (after flatten or linear) */
    cfx_tensor tensors[CFX_MAX_TENSORS]; /* parameters and buffers, state_dict order */
    int n_tensors;
    int fan_in;                     /* of CFX_INIT_FAN_IN tensors */
    size_t weight_offset, n_weight; /* the "weight" and "bias" parameters, 0 if none */
    size_t bias_offset, n_bias;
    size_t col_size;      /* conv2d: im2col workspace it needs, in floats */
    size_t scratch_bytes; /* kept from forward to backward (batch statistics) */
    void *scratch;
    int readers;                 /* layers that read this output */
    int din_add[CFX_MAX_INPUTS]; /* backward: input k's gradient was already written by a
                                    later reader, so this one is added to it */
    int fused;                   /* conv2d: applies the next layer's ReLU itself;
                                    relu: works in place (output = input buffer) and its
                                    backward is done by the layer before or after it;
                                    maxpool2d: its backward applies the previous ReLU's */
    double forward_seconds;      /* time spent in this layer since creation (profiling) */
    double backward_seconds;
} cfx_layer;

/* Spare floats after the gradients: the trainer sends per-step statistics
 * (loss, correct predictions, flags) through the same allreduce. */
#define CFX_GRAD_TAIL 4

/* In-place sum of n doubles over every process training the model (NULL:
 * one process). Batch statistics of BatchNorm go through it. */
typedef void (*cfx_reduce_fn)(void *ctx, double *buf, int n);

typedef struct cfx_model {
    int n_specs;
    cfx_layer_spec *specs; /* the layer list it was made from (blocks unexpanded) */
    int n_layers;
    cfx_layer *layers; /* after expanding blocks */
    int in_c, in_h, in_w;
    int n_classes;
    size_t n_params, n_buffers, n_counts;
    void *state; /* params, buffers, counts in one block */
    size_t state_bytes;
    float *params;   /* trained */
    float *buffers;  /* not trained (running statistics) */
    int64_t *counts; /* not trained, integer (num_batches_tracked) */
    float *grads;    /* n_params + CFX_GRAD_TAIL floats */
    int max_batch;
    int flags;    /* CFX_MODEL_* given at creation */
    int training;      /* 1: batch statistics (default), 0: eval mode */
    int owns_buffers;  /* updates running statistics (0 for extra replicas) */
    int guided;        /* guided backpropagation: ReLU and GELU pass back only positive
                          gradients (cfx-viz; needs CFX_MODEL_KEEP_ACTIVATIONS) */
    int shares_state;  /* state belongs to another model (a replica) */
    cfx_reduce_fn reduce;
    void *reduce_ctx;
    float **acts;                    /* acts[0] input, acts[i+1] output of layer i */
    float **dacts;                   /* their gradients */
    float *col, *dcol;               /* conv workspaces, shared by all layers */
    float *dscratch[CFX_MAX_INPUTS]; /* input gradients that are added, not written */
} cfx_model;

/* Flags of cfx_model_create. */
enum {
    CFX_MODEL_INPUT_GRAD = 1,       /* backward also computes dacts[0] (saliency maps) */
    CFX_MODEL_KEEP_ACTIVATIONS = 2, /* every layer keeps its own output: no in-place
                                       ReLU fused into conv2d / maxpool2d (for showing
                                       pre-activation feature maps) */
    CFX_MODEL_NO_PARAM_GRAD = 4,    /* backward leaves the convolutions' weight and bias
                                       gradients out (explanations need only the
                                       activations' gradients: a third less work) */
};

/* Builds the model for images in_c x in_h x in_w and mini-batches of up to
 * max_batch images: expands blocks, resolves inputs, infers shapes, checks
 * that the layers fit together and end in a flat output. Parameters are zero
 * until cfx_model_init_params. A ReLU after a conv2d whose output nothing
 * else reads works in place inside the convolution (and inside the backward
 * of a following maxpool2d), which saves memory passes; the math is the same. */
int cfx_model_create(cfx_model *m, const cfx_layer_spec *specs, int n_specs, int in_c, int in_h,
                     int in_w, int max_batch, int flags, cfx_error *err);
void cfx_model_free(cfx_model *m);

/* PyTorch's default init: conv and linear weights kaiming_uniform(a = sqrt 5)
 * and biases U(+-1/sqrt(fan_in)), i.e. all U(+-1/sqrt(fan_in)); BatchNorm
 * weight 1, bias 0, running mean 0, variance 1. Resets buffers too. */
void cfx_model_init_params(cfx_model *m, uint64_t seed);

/* Training (batch statistics, running statistics updated) or eval mode. */
void cfx_model_set_training(cfx_model *m, int training);

/* Forward pass of n <= max_batch images from acts[0] ([C][N][H][W]).
 * Returns the logits [n][n_classes]. */
const float *cfx_model_forward(cfx_model *m, int n);

/* Backward pass from dacts[n_layers] (the loss gradient of the logits);
 * overwrites grads (zero when n = 0) and, with CFX_MODEL_INPUT_GRAD,
 * dacts[0]. Run after a forward pass in the same mode. */
void cfx_model_backward(cfx_model *m, int n);

/* ---- replicas: one model, a forward and backward per chunk of images ------ */

/* A model of the same layers for batches of up to max_batch images that
 * shares master's parameters, buffers and counters (its own activations,
 * gradients and workspaces). It leaves running statistics alone unless
 * owns_buffers is set. Free with cfx_model_free (master outlives it). */
int cfx_model_create_replica(cfx_model *rep, const cfx_model *master, int max_batch,
                             cfx_error *err);

/* total[0..n) = the sum of n_rows rows of n doubles over every process
 * training the model (rows may be NULL when n_rows = 0). */
typedef void (*cfx_reduce_rows_fn)(void *ctx, const double *rows, int n_rows, int n,
                                   double *total);

/* Forward and backward of replicas reps[0..n_reps), replica r over counts[r]
 * images, layer by layer, so that the batch sums of a layer (BatchNorm's
 * statistics) are those of every image of every replica (and rank, through
 * reduce): the result equals one model over all the images. A replica with
 * counts[r] = 0 adds nothing. */
void cfx_replicas_forward(cfx_model *const *reps, const int *counts, int n_reps,
                          cfx_reduce_rows_fn reduce, void *ctx);
/* Called by cfx_replicas_backward when every replica has finished the
 * backward pass of layer i: the parameter gradients of layers i.. are final. */
typedef void (*cfx_layer_done_fn)(void *ctx, int layer);
void cfx_replicas_backward(cfx_model *const *reps, const int *counts, int n_reps,
                           cfx_reduce_rows_fn reduce, cfx_layer_done_fn done, void *ctx);

/* Index of the layer with this name (or decimal index), -1 if none. */
int cfx_model_find_layer(const cfx_model *m, const char *name);

/* Human-readable one-line summary of each layer (to out). */
void cfx_model_print(const cfx_model *m, FILE *out);

/* Multiply-adds of one image's forward pass, times 2 (FLOPs). */
double cfx_model_forward_flops(const cfx_model *m);

/* The inputs and output of layer L, and their gradients. */
static inline float *cfx_layer_input(const cfx_model *m, const cfx_layer *L, int k)
{
    return m->acts[L->input[k] + 1];
}
static inline float *cfx_layer_output(const cfx_model *m, const cfx_layer *L)
{
    return m->acts[L->index + 1];
}
static inline float *cfx_layer_dout(const cfx_model *m, const cfx_layer *L)
{
    return m->dacts[L->index + 1];
}
/* Tensor t of L in its storage (params or buffers), and its gradient. */
static inline float *cfx_layer_tensor(const cfx_model *m, const cfx_layer *L, int t)
{
    const cfx_tensor *T = &L->tensors[t];
    return (T->store == CFX_TENSOR_PARAM ? m->params : m->buffers) + T->offset;
}
static inline float *cfx_layer_grad(const cfx_model *m, const cfx_layer *L, int t)
{
    return m->grads + L->tensors[t].offset;
}

/* Used by a type's infer: appends a tensor to L (dims outermost first);
 * returns its index. */
int cfx_layer_add_tensor(cfx_layer *L, const char *suffix, cfx_tensor_store store,
                         cfx_tensor_init init, int rank, const int *dims);

/* infer of elementwise layers (relu, gelu): the output has the input's shape. */
int cfx_layer_same_shape(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err);
/* Floats of L's output for n images. */
static inline size_t cfx_layer_out_size(const cfx_layer *L, int n)
{
    return (size_t)n * L->out_c * L->out_h * L->out_w;
}

/* The spatial shape check shared by types that need one: fails if the
 * input is flat. */
int cfx_layer_need_spatial(const cfx_shape *in, const char *kind_name, cfx_error *err);

#endif
