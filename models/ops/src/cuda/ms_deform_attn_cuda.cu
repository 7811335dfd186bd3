// Multi-scale deformable attention, CUDA kernels. One thread per output element (n, q, m, d): neighbouring
// threads read neighbouring channels of the same value row (coalesced). Grid-stride loops with 64-bit indices
// handle any batch size, so there is no im2col_step.
#include "ms_deform_attn_cuda.h"

// c10's stream header rather than ATen/cuda/CUDAContext.h: the latter pulls in cuBLAS/cuSPARSE/cuSOLVER headers,
// which a toolkit of compiler + runtime + CCCL (what scripts/check_cuda_build.sh installs) does not have.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

namespace {

constexpr int kThreads = 256;

struct Sizes {
  int64_t batch, keys, heads, channels, queries, levels, points;
};

inline int blocks_for(int64_t work) {
  // Grid-stride loops cover the rest; 65535 * 4 blocks keeps every SM busy.
  return static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, 65535 * 4));
}

// Bilinear corners of pixel position (px, py) in an h x w level; false when none is inside.
template <typename scalar_t>
struct Corners {
  int64_t x0, y0;
  scalar_t fx, fy;

  __device__ bool init(scalar_t px, scalar_t py, int64_t h, int64_t w) {
    if (!(px > -1 && py > -1 && px < w && py < h)) return false;  // also rejects NaN
    const scalar_t fx0 = floor(px), fy0 = floor(py);
    x0 = static_cast<int64_t>(fx0);
    y0 = static_cast<int64_t>(fy0);
    fx = px - fx0;
    fy = py - fy0;
    return true;
  }
  __device__ int64_t x(int c) const { return x0 + (c & 1); }
  __device__ int64_t y(int c) const { return y0 + (c >> 1); }
  __device__ bool inside(int c, int64_t h, int64_t w) const {
    return x(c) >= 0 && x(c) < w && y(c) >= 0 && y(c) < h;
  }
  __device__ scalar_t weight(int c) const {
    return ((c & 1) ? fx : 1 - fx) * ((c >> 1) ? fy : 1 - fy);
  }
  __device__ scalar_t dweight_dx(int c) const { return ((c & 1) ? 1 : -1) * ((c >> 1) ? fy : 1 - fy); }
  __device__ scalar_t dweight_dy(int c) const { return ((c >> 1) ? 1 : -1) * ((c & 1) ? fx : 1 - fx); }
};

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                               const int64_t* __restrict__ level_start_index,
                               const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
                               scalar_t* __restrict__ output, Sizes s) {
  const int64_t total = s.batch * s.queries * s.heads * s.channels;
  const int64_t row_stride = s.heads * s.channels;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = index % s.channels;
    const int64_t query_head = index / s.channels;  // (n * Lq + q) * M + m
    const int64_t m = query_head % s.heads;
    const int64_t n = query_head / (s.queries * s.heads);
    const scalar_t* loc = locations + query_head * s.levels * s.points * 2;
    const scalar_t* attn = weights + query_head * s.levels * s.points;
    scalar_t sum = 0;
    for (int64_t l = 0; l < s.levels; ++l) {
      const int64_t h = spatial_shapes[2 * l], w = spatial_shapes[2 * l + 1];
      const scalar_t* level_value = value + (n * s.keys + level_start_index[l]) * row_stride + m * s.channels + d;
      for (int64_t p = 0; p < s.points; ++p, loc += 2, ++attn) {
        Corners<scalar_t> corners;
        if (!corners.init(loc[0] * w - scalar_t(0.5), loc[1] * h - scalar_t(0.5), h, w)) continue;
        scalar_t sampled = 0;
        for (int c = 0; c < 4; ++c)
          if (corners.inside(c, h, w))
            sampled += corners.weight(c) * level_value[(corners.y(c) * w + corners.x(c)) * row_stride];
        sum += attn[0] * sampled;
      }
    }
    output[index] = sum;
  }
}

// grad_value by atomics (rows are shared between queries); the location and weight gradients are sums over the
// D channel threads of a query-head, also accumulated with atomics into zero-initialised outputs.
template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                                const int64_t* __restrict__ level_start_index,
                                const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
                                const scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_value,
                                scalar_t* __restrict__ grad_locations, scalar_t* __restrict__ grad_weights,
                                Sizes s) {
  const int64_t total = s.batch * s.queries * s.heads * s.channels;
  const int64_t row_stride = s.heads * s.channels;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = index % s.channels;
    const int64_t query_head = index / s.channels;
    const int64_t m = query_head % s.heads;
    const int64_t n = query_head / (s.queries * s.heads);
    const scalar_t grad = grad_output[index];
    int64_t sample = query_head * s.levels * s.points;
    for (int64_t l = 0; l < s.levels; ++l) {
      const int64_t h = spatial_shapes[2 * l], w = spatial_shapes[2 * l + 1];
      const int64_t level_offset = (n * s.keys + level_start_index[l]) * row_stride + m * s.channels + d;
      for (int64_t p = 0; p < s.points; ++p, ++sample) {
        const scalar_t* loc = locations + sample * 2;
        Corners<scalar_t> corners;
        if (!corners.init(loc[0] * w - scalar_t(0.5), loc[1] * h - scalar_t(0.5), h, w)) continue;
        const scalar_t attn = weights[sample];
        scalar_t sampled = 0, dsampled_dx = 0, dsampled_dy = 0;
        for (int c = 0; c < 4; ++c) {
          if (!corners.inside(c, h, w)) continue;
          const int64_t offset = level_offset + (corners.y(c) * w + corners.x(c)) * row_stride;
          const scalar_t v = value[offset];
          sampled += corners.weight(c) * v;
          dsampled_dx += corners.dweight_dx(c) * v;
          dsampled_dy += corners.dweight_dy(c) * v;
          atomicAdd(grad_value + offset, attn * corners.weight(c) * grad);
        }
        atomicAdd(grad_weights + sample, grad * sampled);
        atomicAdd(grad_locations + sample * 2, grad * attn * dsampled_dx * w);
        atomicAdd(grad_locations + sample * 2 + 1, grad * attn * dsampled_dy * h);
      }
    }
  }
}

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  for (const at::Tensor* t : {&value, &spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->is_cuda(), "ms_deform_attn (CUDA kernel): all tensors must be on a CUDA device");
    TORCH_CHECK(t->device() == value.device(), "ms_deform_attn (CUDA kernel): all tensors must be on one device");
    TORCH_CHECK(t->is_contiguous(), "ms_deform_attn (CUDA kernel): all tensors must be contiguous");
  }
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn (CUDA kernel): spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "ms_deform_attn (CUDA kernel): value, sampling_locations and attention_weights must share a dtype");
  TORCH_CHECK(value.dim() == 4 && sampling_locations.dim() == 6 && attention_weights.dim() == 5,
              "ms_deform_attn (CUDA kernel): expected value [N,S,M,D], locations [N,Lq,M,L,P,2], "
              "weights [N,Lq,M,L,P]");
}

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return Sizes{value.size(0), value.size(1), value.size(2), value.size(3),
               sampling_locations.size(1), sampling_locations.size(3), sampling_locations.size(4)};
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const Sizes s = sizes_of(value, sampling_locations);
  auto output = at::empty({s.batch, s.queries, s.heads * s.channels}, value.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cuda_forward", [&] {
    forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.is_cuda() && grad_output.is_contiguous() &&
                  grad_output.scalar_type() == value.scalar_type(),
              "ms_deform_attn (CUDA kernel): grad_output must be a contiguous CUDA tensor with value's dtype");
  const c10::cuda::CUDAGuard device_guard(value.device());
  const Sizes s = sizes_of(value, sampling_locations);
  auto grad_value = at::zeros_like(value);
  auto grad_locations = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  const int64_t total = grad_output.numel();
  if (total == 0) return {grad_value, grad_locations, grad_weights};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cuda_backward", [&] {
    backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
        grad_value.mutable_data_ptr<scalar_t>(), grad_locations.mutable_data_ptr<scalar_t>(),
        grad_weights.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_value, grad_locations, grad_weights};
}
