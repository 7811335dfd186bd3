// Multi-scale deformable attention, CUDA kernels (float32 / float64; callers cast half precision to float32).
//
//   value               [N, S, M, D]
//   spatial_shapes      [L, 2] int64 (H, W)
//   level_start_index   [L] int64
//   sampling_locations  [N, Lq, M, L, P, 2] normalised (x, y); pixel x = loc_x * W - 0.5 (align_corners=False)
//   attention_weights   [N, Lq, M, L, P]
//   output              [N, Lq, M*D]
// All tensors contiguous and on the same CUDA device. Any batch size N (no im2col_step).
#pragma once

// ATen only: torch/extension.h (Python and pybind11 headers) is for binding.cpp; nvcc warns on those headers
// (#3189-D) and compiles slower with them.
#include <ATen/ATen.h>

#include <vector>

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

// Returns {grad_value, grad_sampling_locations, grad_attention_weights}.
std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output);
