/* basicblock out=N [stride=S]: torchvision's ResNet BasicBlock as a macro,
 *   conv1 (3x3, stride S, no bias) - bn1 - relu - conv2 (3x3, no bias) - bn2,
 *   plus the input, or downsample.0 (1x1 conv, stride S, no bias) -
 *   downsample.1 (BatchNorm) of it when the shape changes, then ReLU.
 * With name=layer2.0 the keys are torchvision's (layer2.0.conv1.weight, ...). */
#include <stddef.h>
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_layer_kind */

static const cfx_layer_option basicblock_options[] = {
    {"out", CFX_OPT_INT, offsetof(cfx_layer_spec, out), 0, 1, 65536,
     CFX_OPT_REQUIRED | CFX_OPT_SHOWN, "N"},
    {"stride", CFX_OPT_INT, offsetof(cfx_layer_spec, stride), 1, 1, 65536, 0, "S"},
};

extern const cfx_layer_kind cfx_kind_conv2d, cfx_kind_batchnorm2d, cfx_kind_relu, cfx_kind_add;

/* One layer of the block: type, local name, inputs ("" = the previous one). */
static cfx_layer_spec part(const cfx_layer_kind *k, const char *name, const char *in0,
                           const char *in1)
{
    cfx_layer_spec s;
    cfx_layer_spec_default(&s, k);
    snprintf(s.name, sizeof s.name, "%s", name);
    if (in0[0])
        snprintf(s.inputs[s.n_inputs++], CFX_NAME_LEN, "%s", in0);
    if (in1[0])
        snprintf(s.inputs[s.n_inputs++], CFX_NAME_LEN, "%s", in1);
    return s;
}

static cfx_layer_spec conv(const char *name, const char *in, int out, int kernel, int stride)
{
    cfx_layer_spec s = part(&cfx_kind_conv2d, name, in, "");
    s.out = out, s.kernel = kernel, s.stride = stride, s.padding = kernel / 2, s.bias = 0;
    return s;
}

static int basicblock_expand(const cfx_layer_spec *b, const cfx_shape *in, cfx_layer_spec *out,
                             cfx_error *err)
{
    if (cfx_layer_need_spatial(in, "basicblock", err) != 0)
        return -1;
    int n = 0, project = b->stride != 1 || in->c != b->out;
    out[n++] = conv("conv1", CFX_BLOCK_INPUT, b->out, 3, b->stride);
    out[n++] = part(&cfx_kind_batchnorm2d, "bn1", "", "");
    out[n++] = part(&cfx_kind_relu, "relu1", "", "");
    out[n++] = conv("conv2", "", b->out, 3, 1);
    out[n++] = part(&cfx_kind_batchnorm2d, "bn2", "", "");
    if (project) {
        out[n++] = conv("downsample.0", CFX_BLOCK_INPUT, b->out, 1, b->stride);
        out[n++] = part(&cfx_kind_batchnorm2d, "downsample.1", "", "");
    }
    out[n++] = part(&cfx_kind_add, "add", "bn2", project ? "downsample.1" : CFX_BLOCK_INPUT);
    out[n++] = part(&cfx_kind_relu, "", "", ""); /* the block's output, named as the block */
    return n;
}

const cfx_layer_kind cfx_kind_basicblock = {
    .name = "basicblock",
    .torch_name = "BasicBlock",
    .help = "ResNet basic block: conv-bn-relu-conv-bn plus the input (or a 1x1 conv-bn projection "
            "when the shape changes), then relu; keys as torchvision's",
    .options = basicblock_options,
    .n_options = sizeof basicblock_options / sizeof basicblock_options[0],
    .n_inputs = 1,
    .expand = basicblock_expand,
};
