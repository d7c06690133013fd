/* Global average pooling (torch.nn.AdaptiveAvgPool2d(1)): [C][N][H][W] -> [C][N][1][1]. */
#include "cfx/nn.h" /* defines: cfx_avgpool_forward, cfx_avgpool_backward */

void cfx_avgpool_forward(float *out, const float *in, size_t planes, int HW)
{
    for (size_t p = 0; p < planes; p++) {
        const float *x = in + p * HW;
        float s = 0.0f;
        for (int j = 0; j < HW; j++)
            s += x[j];
        out[p] = s / (float)HW;
    }
}

void cfx_avgpool_backward(float *din, const float *dout, size_t planes, int HW)
{
    for (size_t p = 0; p < planes; p++) {
        float g = dout[p] / (float)HW;
        for (int j = 0; j < HW; j++)
            din[p * HW + j] = g;
    }
}

/* ---- the layer: avgpool ------------------------------------------------------ */

static int avgpool_infer(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err)
{
    (void)max_batch;
    if (cfx_layer_need_spatial(in, "avgpool", err) != 0)
        return -1;
    L->out_c = in->c, L->out_h = L->out_w = 1;
    return 0;
}

static void avgpool_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    cfx_avgpool_forward(cfx_layer_output(m, L), cfx_layer_input(m, L, 0), (size_t)L->in_c * n,
                        L->in_h * L->in_w);
}

static void avgpool_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    if (din[0])
        cfx_avgpool_backward(din[0], cfx_layer_dout(m, L), (size_t)L->in_c * n, L->in_h * L->in_w);
}

static int avgpool_attrs(const cfx_layer *L, cfx_attr *a)
{
    (void)L;
    a[0] = (cfx_attr){"output_size", 1, 1};
    return 1;
}

const cfx_layer_kind cfx_kind_avgpool = {
    .name = "avgpool",
    .torch_name = "AdaptiveAvgPool2d",
    .help = "global average pooling to 1x1 (AdaptiveAvgPool2d(1))",
    .n_inputs = 1,
    .infer = avgpool_infer,
    .forward = avgpool_layer_forward,
    .backward = avgpool_layer_backward,
    .attrs = avgpool_attrs,
};
