// Multi-scale deformable attention on the CPU: forward and backward, parallel with at::parallel_for.
//
// Layouts (all contiguous, float or double):
//   value               [N, S, M, D]        one corner read = one contiguous D-vector (row stride M*D)
//   spatial_shapes      [L, 2] long (H, W)
//   level_start_index   [L] long
//   sampling_locations  [N, Lq, M, L, P, 2] normalised (x, y); pixel x = loc_x * W - 0.5 (align_corners=False)
//   attention_weights   [N, Lq, M, L, P]
//   output              [N, Lq, M*D]
// Corners outside the level's image read zero (grid_sample padding_mode='zeros').
//
// Forward tasks are (batch item, head, block of queries): a head's slice of value (S*D numbers) stays in cache
// while its queries are summed. Backward tasks are (batch item, head, level), so each task owns its slice of
// grad_value (no atomics, no per-thread buffers). Per query-head the samples are first "planned" (corner keys
// and weights, off-image corners clamped with weight 0) so that the sampling loops have no branches. Channel
// loops use SIMD vectors for the usual head widths, and on x86-64 the hot functions are cloned for AVX2/FMA
// with the clone picked at load time.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

// The clone is picked by CPU features at load time ("arch=haswell" would test the CPU model instead).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && !defined(_WIN32)
#define MSDA_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32)
#define MSDA_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MSDA_TARGET_CLONES
#endif

// Helpers are forced inline so that each target clone compiles them for its own instruction set (a call out of
// the AVX2 clone would land in baseline code, where std::floor is a libm call).
#if defined(__GNUC__) || defined(__clang__)
#define MSDA_INLINE inline __attribute__((always_inline))
#else
#define MSDA_INLINE inline
#endif

namespace {

// Queries per forward task: big enough to amortise the task setup, small enough to balance threads.
constexpr int64_t kQueryBlock = 256;

template <typename scalar_t>
struct Problem {
  const scalar_t* value;
  const scalar_t* locations;
  const scalar_t* weights;
  int64_t batch, keys, heads, channels, queries, levels, points;
  // Per sample index i = l * P + p (the [L, P] part of the layouts): its level's size and first key.
  const scalar_t* sample_height;
  const scalar_t* sample_width;
  const int32_t* sample_rows;
  const int32_t* sample_cols;
  const int32_t* sample_start;

  int64_t row_stride() const { return heads * channels; }
  // Element (n, key 0, m, 0) of value; key k of it is at + k * row_stride().
  int64_t head_offset(int64_t n, int64_t m) const { return n * keys * row_stride() + m * channels; }
};

// Bilinear corners (c = 0..3: (x0, y0), (x1, y0), (x0, y1), (x1, y1)) of `count` consecutive samples.
// Corners outside the image get weight 0 and a clamped, valid key, so the sampling loops need no branches.
template <typename scalar_t>
struct Plan {
  std::vector<int32_t> key[4];          // key index within the batch item: level start + y * W + x
  std::vector<scalar_t> weight[4];      // bilinear weight, 0 outside
  std::vector<scalar_t> dweight_dx[4];  // d(weight)/d(pixel x), 0 outside (backward only)
  std::vector<scalar_t> dweight_dy[4];

  explicit Plan(int64_t count) {
    for (int c = 0; c < 4; ++c) {
      key[c].resize(count);
      weight[c].resize(count);
      dweight_dx[c].resize(count);
      dweight_dy[c].resize(count);
    }
  }
};

// Fills plan[0, count) from `count` samples: locations (x, y) interleaved, and per-sample level arrays.
// Locations are clamped to [-2, size + 1] first (NaN -> -2): every corner is then outside, and the integer
// conversion is defined.
template <bool kWithGradients, typename scalar_t>
MSDA_INLINE void plan_samples(int64_t count, const scalar_t* __restrict__ loc, const scalar_t* __restrict__ height,
                              const scalar_t* __restrict__ width, const int32_t* __restrict__ rows,
                              const int32_t* __restrict__ cols, const int32_t* __restrict__ start,
                              Plan<scalar_t>& plan) {
  for (int64_t i = 0; i < count; ++i) {
    scalar_t px = loc[2 * i] * width[i] - scalar_t(0.5);
    scalar_t py = loc[2 * i + 1] * height[i] - scalar_t(0.5);
    px = px > -2 ? (px < width[i] + 1 ? px : width[i] + 1) : scalar_t(-2);
    py = py > -2 ? (py < height[i] + 1 ? py : height[i] + 1) : scalar_t(-2);
    const scalar_t x0f = std::floor(px), y0f = std::floor(py);
    const scalar_t fx = px - x0f, fy = py - y0f, gx = 1 - fx, gy = 1 - fy;
    const int32_t x0 = static_cast<int32_t>(x0f), y0 = static_cast<int32_t>(y0f);
    const scalar_t bilinear[4] = {gx * gy, fx * gy, gx * fy, fx * fy};
    const scalar_t dbilinear_dx[4] = {-gy, gy, -fy, fy};
    const scalar_t dbilinear_dy[4] = {-gx, -fx, gx, fx};
    for (int c = 0; c < 4; ++c) {
      const int32_t x = x0 + (c & 1), y = y0 + (c >> 1);
      const bool inside = x >= 0 && x < cols[i] && y >= 0 && y < rows[i];
      const int32_t xc = x < 0 ? 0 : (x < cols[i] ? x : cols[i] - 1);
      const int32_t yc = y < 0 ? 0 : (y < rows[i] ? y : rows[i] - 1);
      plan.key[c][i] = start[i] + yc * cols[i] + xc;
      plan.weight[c][i] = inside ? bilinear[c] : scalar_t(0);
      if constexpr (kWithGradients) {
        plan.dweight_dx[c][i] = inside ? dbilinear_dx[c] : scalar_t(0);
        plan.dweight_dy[c][i] = inside ? dbilinear_dy[c] : scalar_t(0);
      }
    }
  }
}

// How many queries ahead the sampling loops prefetch their locations and weights (~ memory latency / query).
constexpr int64_t kPrefetchQueries = 4;

// A hint only: prefetching past the end of a tensor is harmless.
MSDA_INLINE void prefetch(const void* address) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(address);
#endif
}

// 32-byte SIMD vectors (GCC/Clang vector extensions): AVX2 registers in the x86-64-v3 clone, pairs of SSE
// registers in the baseline one. Used for the compile-time head widths, which are multiples of kLanes.
template <typename scalar_t>
struct Simd {
  static constexpr int64_t kBytes = 32;
  static constexpr int64_t kLanes = kBytes / sizeof(scalar_t);
  typedef scalar_t type __attribute__((vector_size(kBytes)));
  static MSDA_INLINE type load(const scalar_t* p) {
    type v;
    std::memcpy(&v, p, sizeof(type));
    return v;
  }
  static MSDA_INLINE void store(scalar_t* p, type v) { std::memcpy(p, &v, sizeof(type)); }
};

// y += a * x over the head width; kChannels > 0: compile-time width, 0: run-time `channels`.
template <typename scalar_t, int64_t kChannels>
MSDA_INLINE void axpy(scalar_t* __restrict__ y, const scalar_t* __restrict__ x, scalar_t a, int64_t channels) {
  if constexpr (kChannels > 0) {
    using V = Simd<scalar_t>;
    for (int64_t d = 0; d < kChannels; d += V::kLanes) V::store(y + d, V::load(y + d) + a * V::load(x + d));
  } else {
    for (int64_t d = 0; d < channels; ++d) y[d] += a * x[d];
  }
}

template <typename scalar_t, int64_t kChannels>
MSDA_INLINE scalar_t dot(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t channels) {
  scalar_t total = 0;
  if constexpr (kChannels > 0) {
    using V = Simd<scalar_t>;
    typename V::type partial = {};
    for (int64_t d = 0; d < kChannels; d += V::kLanes) partial += V::load(a + d) * V::load(b + d);
    for (int64_t j = 0; j < V::kLanes; ++j) total += partial[j];
  } else {
    for (int64_t d = 0; d < channels; ++d) total += a[d] * b[d];
  }
  return total;
}

// Forward tasks [begin, end): task = (n, m, block of kQueryBlock queries). One query-head at a time: plan its
// L*P samples, then sum 4*L*P weighted D-vectors of this head (a cache-sized slice of value) in registers.
template <typename scalar_t, int64_t kChannels>
MSDA_TARGET_CLONES void forward_tasks(const Problem<scalar_t>& pb, scalar_t* output, int64_t begin, int64_t end) {
  const int64_t channels = pb.channels, samples = pb.levels * pb.points, row_stride = pb.row_stride();
  const int64_t query_blocks = (pb.queries + kQueryBlock - 1) / kQueryBlock;
  Plan<scalar_t> plan(samples);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / (pb.heads * query_blocks), m = (task / query_blocks) % pb.heads;
    const int64_t q_begin = (task % query_blocks) * kQueryBlock;
    const int64_t q_end = std::min(q_begin + kQueryBlock, pb.queries);
    const scalar_t* head_value = pb.value + pb.head_offset(n, m);
    for (int64_t q = q_begin; q < q_end; ++q) {
      const int64_t query_head = (n * pb.queries + q) * pb.heads + m;
      prefetch(pb.locations + (query_head + kPrefetchQueries * pb.heads) * samples * 2);
      prefetch(pb.weights + (query_head + kPrefetchQueries * pb.heads) * samples);
      plan_samples<false>(samples, pb.locations + query_head * samples * 2, pb.sample_height, pb.sample_width,
                          pb.sample_rows, pb.sample_cols, pb.sample_start, plan);
      const scalar_t* attn = pb.weights + query_head * samples;
      scalar_t* out = output + query_head * channels;
      if constexpr (kChannels > 0) {
        // A compile-time width: the sum stays in SIMD registers.
        using V = Simd<scalar_t>;
        typename V::type acc[kChannels / V::kLanes] = {};
        for (int64_t i = 0; i < samples; ++i)
          for (int c = 0; c < 4; ++c) {
            const scalar_t* x = head_value + plan.key[c][i] * row_stride;
            const scalar_t a = attn[i] * plan.weight[c][i];
            for (int64_t j = 0; j < kChannels / V::kLanes; ++j) acc[j] += a * V::load(x + j * V::kLanes);
          }
        for (int64_t j = 0; j < kChannels / V::kLanes; ++j) V::store(out + j * V::kLanes, acc[j]);
      } else {
        std::fill_n(out, channels, scalar_t(0));
        for (int64_t i = 0; i < samples; ++i)
          for (int c = 0; c < 4; ++c)
            axpy<scalar_t, kChannels>(out, head_value + plan.key[c][i] * row_stride, attn[i] * plan.weight[c][i],
                                      channels);
      }
    }
  }
}

// Backward tasks [begin, end): task = (n, m, l). It alone writes grad_value of level l for batch n and head m,
// and the location/weight gradients of (n, m, l) for every query: no races, no per-thread buffers. All tasks
// carry the same work (Lq * P samples), which keeps the threads balanced.
template <typename scalar_t, int64_t kChannels>
MSDA_TARGET_CLONES void backward_tasks(const Problem<scalar_t>& pb, const scalar_t* grad_output, scalar_t* grad_value,
                                       scalar_t* grad_locations, scalar_t* grad_weights, int64_t begin,
                                       int64_t end) {
  const int64_t channels = pb.channels, points = pb.points, row_stride = pb.row_stride();
  const int64_t query_stride = pb.heads * pb.levels * points;
  Plan<scalar_t> plan(points);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / (pb.heads * pb.levels), m = (task / pb.levels) % pb.heads, l = task % pb.levels;
    const scalar_t* head_value = pb.value + pb.head_offset(n, m);
    scalar_t* head_grad_value = grad_value + pb.head_offset(n, m);
    const int64_t level_sample = l * points;  // first sample of level l in the per-sample arrays
    for (int64_t q = 0; q < pb.queries; ++q) {
      const int64_t query_head = (n * pb.queries + q) * pb.heads + m;
      const int64_t sample = (query_head * pb.levels + l) * points;
      // Queries are pb.heads * L * P samples apart: too far for the hardware prefetcher to follow.
      prefetch(pb.locations + (sample + kPrefetchQueries * query_stride) * 2);
      prefetch(pb.weights + sample + kPrefetchQueries * query_stride);
      plan_samples<true>(points, pb.locations + sample * 2, pb.sample_height + level_sample,
                         pb.sample_width + level_sample, pb.sample_rows + level_sample,
                         pb.sample_cols + level_sample, pb.sample_start + level_sample, plan);
      const scalar_t* grad_out = grad_output + query_head * channels;
      for (int64_t p = 0; p < points; ++p) {
        const scalar_t attn = pb.weights[sample + p];
        scalar_t grad_attn = 0, grad_px = 0, grad_py = 0;
        for (int c = 0; c < 4; ++c) {
          const int64_t row = plan.key[c][p] * row_stride;
          const scalar_t sampled_grad = dot<scalar_t, kChannels>(grad_out, head_value + row, channels);
          axpy<scalar_t, kChannels>(head_grad_value + row, grad_out, attn * plan.weight[c][p], channels);
          grad_attn += plan.weight[c][p] * sampled_grad;
          grad_px += plan.dweight_dx[c][p] * sampled_grad;
          grad_py += plan.dweight_dy[c][p] * sampled_grad;
        }
        grad_weights[sample + p] = grad_attn;
        grad_locations[(sample + p) * 2] = attn * grad_px * pb.sample_width[level_sample];
        grad_locations[(sample + p) * 2 + 1] = attn * grad_py * pb.sample_height[level_sample];
      }
    }
  }
}

// Calls fn(std::integral_constant<int64_t, K>) with K = channels for the usual head widths (multiples of every
// Simd<scalar_t>::kLanes), else K = 0.
template <typename Fn>
void dispatch_channels(int64_t channels, Fn&& fn) {
  switch (channels) {
    case 16: return fn(std::integral_constant<int64_t, 16>{});
    case 32: return fn(std::integral_constant<int64_t, 32>{});
    case 64: return fn(std::integral_constant<int64_t, 64>{});
    default: return fn(std::integral_constant<int64_t, 0>{});
  }
}

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  for (const at::Tensor* t : {&value, &spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->device().is_cpu(), "ms_deform_attn (CPU kernel): all tensors must be on the CPU");
    TORCH_CHECK(t->is_contiguous(), "ms_deform_attn (CPU kernel): all tensors must be contiguous");
  }
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn (CPU kernel): spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "ms_deform_attn (CPU kernel): value, sampling_locations and attention_weights must share a dtype");
  TORCH_CHECK(value.dim() == 4 && sampling_locations.dim() == 6 && attention_weights.dim() == 5,
              "ms_deform_attn (CPU kernel): expected value [N,S,M,D], locations [N,Lq,M,L,P,2], weights [N,Lq,M,L,P]");
  TORCH_CHECK(value.size(1) < (int64_t(1) << 31),
              "ms_deform_attn (CPU kernel): at most 2^31 - 1 keys per batch item (int32 key indices)");
}

// Per-sample level arrays of the Problem (index l * P + p): sizes as scalar_t and int32, first keys.
template <typename scalar_t>
struct SampleLevels {
  std::vector<scalar_t> height, width;
  std::vector<int32_t> rows, cols, start;

  SampleLevels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t points) {
    const auto shapes = spatial_shapes.accessor<int64_t, 2>();
    const auto starts = level_start_index.accessor<int64_t, 1>();
    for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
      for (int64_t p = 0; p < points; ++p) {
        height.push_back(static_cast<scalar_t>(shapes[l][0]));
        width.push_back(static_cast<scalar_t>(shapes[l][1]));
        rows.push_back(static_cast<int32_t>(shapes[l][0]));
        cols.push_back(static_cast<int32_t>(shapes[l][1]));
        start.push_back(static_cast<int32_t>(starts[l]));
      }
    }
  }
};

// The raw view of the inputs; `levels` must outlive it.
template <typename scalar_t>
Problem<scalar_t> make_problem(const at::Tensor& value, const at::Tensor& sampling_locations,
                               const at::Tensor& attention_weights, const SampleLevels<scalar_t>& levels) {
  return Problem<scalar_t>{
      value.const_data_ptr<scalar_t>(),
      sampling_locations.const_data_ptr<scalar_t>(),
      attention_weights.const_data_ptr<scalar_t>(),
      value.size(0), value.size(1), value.size(2), value.size(3),
      sampling_locations.size(1), sampling_locations.size(3), sampling_locations.size(4),
      levels.height.data(), levels.width.data(), levels.rows.data(), levels.cols.data(), levels.start.data(),
  };
}

}  // namespace

at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  auto output = at::empty({value.size(0), sampling_locations.size(1), value.size(2) * value.size(3)},
                          value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    const SampleLevels<scalar_t> levels(spatial_shapes, level_start_index, sampling_locations.size(4));
    const auto pb = make_problem<scalar_t>(value, sampling_locations, attention_weights, levels);
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    const int64_t query_blocks = (pb.queries + kQueryBlock - 1) / kQueryBlock;
    dispatch_channels(pb.channels, [&](auto channels) {
      at::parallel_for(0, pb.batch * pb.heads * query_blocks, 1, [&](int64_t begin, int64_t end) {
        forward_tasks<scalar_t, decltype(channels)::value>(pb, out, begin, end);
      });
    });
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start_index,
                                                const at::Tensor& sampling_locations,
                                                const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type(),
              "ms_deform_attn (CPU kernel): grad_output must be contiguous with value's dtype");
  auto grad_value = at::zeros_like(value);
  // Samples with no corner inside are skipped by the kernel: their gradients stay zero.
  auto grad_locations = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    const SampleLevels<scalar_t> levels(spatial_shapes, level_start_index, sampling_locations.size(4));
    const auto pb = make_problem<scalar_t>(value, sampling_locations, attention_weights, levels);
    dispatch_channels(pb.channels, [&](auto channels) {
      at::parallel_for(0, pb.batch * pb.heads * pb.levels, 1, [&](int64_t begin, int64_t end) {
        backward_tasks<scalar_t, decltype(channels)::value>(
            pb, grad_output.const_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<scalar_t>(),
            grad_locations.mutable_data_ptr<scalar_t>(), grad_weights.mutable_data_ptr<scalar_t>(), begin, end);
      });
    });
  });
  return {grad_value, grad_locations, grad_weights};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ms_deform_attn_forward", &ms_deform_attn_forward, "Multi-scale deformable attention forward (CPU)");
  m.def("ms_deform_attn_backward", &ms_deform_attn_backward,
        "Multi-scale deformable attention backward (CPU): grad_value, grad_sampling_locations, "
        "grad_attention_weights");
}
