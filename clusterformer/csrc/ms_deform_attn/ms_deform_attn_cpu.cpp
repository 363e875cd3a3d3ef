// Multi-scale deformable attention: CPU kernels (float32 / float64, multi-threaded with ATen's
// parallel_for; channel loops vectorised with `omp simd`). The sampling convention lives in
// bilinear.h, shared with the CUDA kernels.
//
// Parallelisation.
// * Forward: over (batch, query). Each output row (n, q, m, :) is written by exactly one task.
// * Backward: over (batch, head, query block). grad_sampling_locations and grad_attention_weights
//   of a sample are written only by the task owning its query. grad_value is a scatter (many
//   queries sample the same pixel), so a task must own every row it adds to: the rows of head m of
//   image n, grad_value[n, :, m, :], belong to the tasks of (n, m). When there are at least as many
//   (n, m) pairs as threads (the common case: 8 heads) each (n, m) is one task writing straight
//   into grad_value, race-free without atomics. With fewer pairs than threads, the queries of each
//   pair are split into blocks; block 0 writes into grad_value, block b > 0 into its own zeroed
//   copy, and the copies are summed at the end. Either way there are no atomics and the result
//   is deterministic (bitwise repeatable for a given thread count).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ms_deform_attn/bilinear.h"
#include "ms_deform_attn/ms_deform_attn.h"

namespace clusterformer {
namespace {

// Channel loops take the channel count as a compile-time constant kD when the kernels are
// specialised for it (see dispatch_channels), so they unroll into a few vector instructions with
// no remainder handling; kD = 0 means "runtime D".

// out[d] += coef * v[d]
template <typename scalar_t, int kD>
inline void axpy(
    int64_t D, scalar_t coef, const scalar_t* __restrict__ v, scalar_t* __restrict__ out) {
  if (kD > 0) D = kD;
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) out[d] += coef * v[d];
}

// grad_v[d] += coef * g[d]; returns sum_d g[d] * v[d]. One pass over the channels serves both the
// scatter into grad_value and the dot product the location / weight gradients need.
template <typename scalar_t, int kD>
inline scalar_t scatter_and_dot(
    int64_t D, scalar_t coef, const scalar_t* __restrict__ g, const scalar_t* __restrict__ v,
    scalar_t* __restrict__ grad_v) {
  if (kD > 0) D = kD;
  scalar_t dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t d = 0; d < D; ++d) {
    dot += g[d] * v[d];
    grad_v[d] += coef * g[d];
  }
  return dot;
}

struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return Sizes{
      value.size(0),
      value.size(1),
      value.size(2),
      value.size(3),
      sampling_locations.size(1),
      sampling_locations.size(3),
      sampling_locations.size(4)};
}

// The kernels index value with level_start_index + row * W + col, so every level must lie inside
// the S tokens. (Cheap on the CPU, where the index tensors are host memory.)
void check_levels(
    const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S) {
  const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
  const int64_t* starts = level_start_index.data_ptr<int64_t>();
  for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
    TORCH_CHECK(
        level_fits(H, W, start, S),
        "ms_deform_attn: level ", l, " (spatial_shapes (", H, ", ", W, "), level_start_index ",
        start, ") does not fit in value's ", S, " tokens");
  }
}

template <typename scalar_t, int kD>
void forward_kernel(
    const Sizes& z, const scalar_t* value, const int64_t* shapes, const int64_t* starts,
    const scalar_t* locations, const scalar_t* weights, scalar_t* out) {
  const int64_t token_stride = z.M * z.D;  // distance between two tokens of one head in value
  // A (batch, query) task does M * L * P samples; a few dozen tasks amortise scheduling.
  at::parallel_for(0, z.N * z.Lq, 16, [&](int64_t begin, int64_t end) {
    BilinearCorners<scalar_t> c;
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / z.Lq;
      for (int64_t m = 0; m < z.M; ++m) {
        scalar_t* out_row = out + (nq * z.M + m) * z.D;
        std::fill(out_row, out_row + z.D, scalar_t(0));
        const int64_t first_sample = (nq * z.M + m) * z.L * z.P;
        for (int64_t l = 0; l < z.L; ++l) {
          const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
          const scalar_t* level_value = value + ((n * z.S + starts[l]) * z.M + m) * z.D;
          for (int64_t p = 0; p < z.P; ++p) {
            const int64_t s = first_sample + l * z.P + p;
            bilinear_corners(locations[2 * s], locations[2 * s + 1], H, W, c);
            const scalar_t a = weights[s];
            for (int k = 0; k < 4; ++k) {
              if (!c.valid[k]) continue;
              axpy<scalar_t, kD>(
                  z.D, a * c.weight[k], level_value + c.token[k] * token_stride, out_row);
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t, int kD>
void backward_kernel(
    const Sizes& z,
    int64_t query_blocks,
    const scalar_t* value,
    const int64_t* shapes,
    const int64_t* starts,
    const scalar_t* locations,
    const scalar_t* weights,
    const scalar_t* grad_out,
    scalar_t* grad_value,
    scalar_t* grad_value_copies,  // (query_blocks - 1) zeroed copies of grad_value, or nullptr
    scalar_t* grad_locations,
    scalar_t* grad_weights) {
  const int64_t token_stride = z.M * z.D;
  const int64_t value_numel = z.N * z.S * z.M * z.D;
  at::parallel_for(0, z.N * z.M * query_blocks, 1, [&](int64_t begin, int64_t end) {
    BilinearCorners<scalar_t> c;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t block = task % query_blocks;
      const int64_t n = task / query_blocks / z.M, m = task / query_blocks % z.M;
      const int64_t q_begin = z.Lq * block / query_blocks;
      const int64_t q_end = z.Lq * (block + 1) / query_blocks;
      scalar_t* grad_value_dst =
          block == 0 ? grad_value : grad_value_copies + (block - 1) * value_numel;
      for (int64_t q = q_begin; q < q_end; ++q) {
        const int64_t nqm = (n * z.Lq + q) * z.M + m;
        const scalar_t* g = grad_out + nqm * z.D;
        for (int64_t l = 0; l < z.L; ++l) {
          const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
          const int64_t level_offset = ((n * z.S + starts[l]) * z.M + m) * z.D;
          const scalar_t* level_value = value + level_offset;
          scalar_t* level_grad_value = grad_value_dst + level_offset;
          for (int64_t p = 0; p < z.P; ++p) {
            const int64_t s = (nqm * z.L + l) * z.P + p;
            bilinear_corners(locations[2 * s], locations[2 * s + 1], H, W, c);
            const scalar_t a = weights[s];
            // out = a * sum_k w_k v_k, so with dot_k = <grad_out, v_k>:
            //   d/da = sum_k w_k dot_k,  d/dx = a * sum_k dw_k/dx dot_k (same for y),
            //   d/dv_k = a * w_k * grad_out.
            scalar_t grad_a = 0, grad_x = 0, grad_y = 0;
            for (int k = 0; k < 4; ++k) {
              if (!c.valid[k]) continue;
              const int64_t offset = c.token[k] * token_stride;
              const scalar_t dot = scatter_and_dot<scalar_t, kD>(
                  z.D, a * c.weight[k], g, level_value + offset, level_grad_value + offset);
              grad_a += c.weight[k] * dot;
              grad_x += c.dweight_dx[k] * dot;
              grad_y += c.dweight_dy[k] * dot;
            }
            grad_weights[s] = grad_a;
            grad_locations[2 * s] = a * grad_x;
            grad_locations[2 * s + 1] = a * grad_y;
          }
        }
      }
    }
  });
}

// Calls fn(std::integral_constant<int, kD>) with kD = D for the usual per-head widths (256 or 512
// channels over 8 or 16 heads), else kD = 0.
template <typename Fn>
void dispatch_channels(int64_t D, const Fn& fn) {
  switch (D) {
    case 16:
      return fn(std::integral_constant<int, 16>());
    case 32:
      return fn(std::integral_constant<int, 32>());
    case 64:
      return fn(std::integral_constant<int, 64>());
    default:
      return fn(std::integral_constant<int, 0>());
  }
}

}  // namespace

at::Tensor ms_deform_attn_cpu_forward(const MSDeformAttnInputs& in) {
  const Sizes z = sizes_of(in.value, in.sampling_locations);
  check_levels(in.spatial_shapes, in.level_start_index, z.S);
  at::Tensor out = at::empty({z.N, z.Lq, z.M * z.D}, in.value.options());
  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_cpu_forward", [&] {
    dispatch_channels(z.D, [&](auto kD) {
      forward_kernel<scalar_t, decltype(kD)::value>(
          z, in.value.data_ptr<scalar_t>(), in.spatial_shapes.data_ptr<int64_t>(),
          in.level_start_index.data_ptr<int64_t>(), in.sampling_locations.data_ptr<scalar_t>(),
          in.attention_weights.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    });
  });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_cpu_backward(
    const MSDeformAttnInputs& in, const at::Tensor& grad_output) {
  const Sizes z = sizes_of(in.value, in.sampling_locations);
  check_levels(in.spatial_shapes, in.level_start_index, z.S);
  at::Tensor grad_value = at::zeros_like(in.value);
  // Every sample's gradient is written exactly once, so these need no zeroing.
  at::Tensor grad_locations = at::empty_like(in.sampling_locations);
  at::Tensor grad_weights = at::empty_like(in.attention_weights);

  // Enough (n, m, query block) tasks to occupy every thread; see the note at the top.
  const int64_t pairs = z.N * z.M;
  const int64_t threads = at::get_num_threads();
  int64_t query_blocks = 1;
  if (pairs > 0 && pairs < threads) {
    query_blocks = std::max<int64_t>(1, std::min<int64_t>((threads + pairs - 1) / pairs, z.Lq));
  }
  at::Tensor grad_value_copies;
  if (query_blocks > 1) {
    grad_value_copies = at::zeros({query_blocks - 1, z.N, z.S, z.M, z.D}, in.value.options());
  }

  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_cpu_backward", [&] {
    dispatch_channels(z.D, [&](auto kD) {
      backward_kernel<scalar_t, decltype(kD)::value>(
          z, query_blocks, in.value.data_ptr<scalar_t>(), in.spatial_shapes.data_ptr<int64_t>(),
          in.level_start_index.data_ptr<int64_t>(), in.sampling_locations.data_ptr<scalar_t>(),
          in.attention_weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
          grad_value.data_ptr<scalar_t>(),
          query_blocks > 1 ? grad_value_copies.data_ptr<scalar_t>() : nullptr,
          grad_locations.data_ptr<scalar_t>(), grad_weights.data_ptr<scalar_t>());
    });
  });
  if (query_blocks > 1) grad_value.add_(grad_value_copies.sum(0));
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace clusterformer
