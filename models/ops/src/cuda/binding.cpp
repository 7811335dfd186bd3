// Python module MultiScaleDeformableAttention (built by models/ops/setup.py), the interface of Deformable DETR's
// op: ms_deform_attn_forward / ms_deform_attn_backward, without the im2col_step argument.
#include <torch/extension.h>

#include "ms_deform_attn_cuda.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // Tells models.ops this build apart from Deformable DETR's module of the same name (which takes im2col_step).
  m.attr("hcd_interface_version") = 1;
  m.def("ms_deform_attn_forward", &ms_deform_attn_cuda_forward,
        "Multi-scale deformable attention forward (CUDA): value, spatial_shapes, level_start_index, "
        "sampling_locations, attention_weights -> output [N, Lq, M*D]");
  m.def("ms_deform_attn_backward", &ms_deform_attn_cuda_backward,
        "Multi-scale deformable attention backward (CUDA): ..., grad_output -> [grad_value, "
        "grad_sampling_locations, grad_attention_weights]");
}
