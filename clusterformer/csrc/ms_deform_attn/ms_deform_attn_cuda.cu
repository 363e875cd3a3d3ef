// Multi-scale deformable attention: CUDA kernels (float32, float16, bfloat16, float64).
//
// Work layout. One output row (n, q, m, :) of D channels is handled by a *group* of G lanes,
// G = the smallest power of two >= D, capped at a warp (32); lanes stride over the channels, so a
// group reads value rows with coalesced accesses and any D works. A warp holds 32 / G groups and a
// group never straddles two warps (256-thread blocks).
//
// Precision. Everything is accumulated in at::opmath_type<scalar_t> (float for half / bfloat16 /
// float, double for double). grad_value is a scatter (many queries sample the same pixel), done
// with atomic adds into an opmath-typed buffer: for float / double that buffer is grad_value
// itself, for half / bfloat16 a float32 buffer converted at the end. This is more accurate than
// atomics on 16-bit values (no rounding per addition) and uses native float atomics.
//
// Bounds. Sampling goes through bilinear_corners (bilinear.h, shared with the CPU kernels): only
// on-map pixels are read. A level that does not fit inside value's S tokens (inconsistent
// spatial_shapes / level_start_index, which the host cannot check without a device sync) is
// skipped instead of being read out of bounds.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
// c10's stream / guard headers rather than ATen/cuda/CUDAContext.h, which pulls in cuBLAS and
// cuSPARSE headers that a minimal CUDA toolkit (nvcc + runtime) does not ship.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "ms_deform_attn/bilinear.h"
#include "ms_deform_attn/ms_deform_attn.h"

namespace clusterformer {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;

int group_size_for(int64_t D) {
  int group = 1;
  while (group < D && group < kWarpSize) group <<= 1;
  return group;
}

unsigned int blocks_for(int64_t rows, int group) {
  const int64_t blocks = (rows * group + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_CHECK(
      blocks <= std::numeric_limits<int32_t>::max(), "ms_deform_attn: ", rows,
      " (batch x query x head) rows exceed the CUDA grid; split the batch");
  return static_cast<unsigned int>(blocks);
}

struct Sizes {
  int64_t rows;  // N * Lq * M
  int64_t Lq, S, M, D, L, P;
};

template <typename scalar_t>
__global__ void forward_kernel(
    Sizes z, int group, const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts, const scalar_t* __restrict__ locations,
    const scalar_t* __restrict__ weights, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = thread / group;  // (n, q, m)
  const int lane = static_cast<int>(thread % group);
  if (row >= z.rows) return;  // no cross-lane communication in the forward pass
  const int64_t m = row % z.M;
  const int64_t n = row / z.M / z.Lq;
  const int64_t token_stride = z.M * z.D;

  for (int64_t d = lane; d < z.D; d += group) {
    acc_t acc = 0;
    for (int64_t l = 0; l < z.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
      if (!level_fits(H, W, start, z.S)) continue;
      const scalar_t* level_value = value + ((n * z.S + start) * z.M + m) * z.D + d;
      for (int64_t p = 0; p < z.P; ++p) {
        const int64_t s = (row * z.L + l) * z.P + p;
        BilinearCorners<acc_t> c;
        bilinear_corners(
            static_cast<acc_t>(locations[2 * s]), static_cast<acc_t>(locations[2 * s + 1]), H,
            W, c);
        acc_t sample = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.valid[k]) {
            sample += c.weight[k] * static_cast<acc_t>(level_value[c.token[k] * token_stride]);
          }
        }
        acc += static_cast<acc_t>(weights[s]) * sample;
      }
    }
    out[row * z.D + d] = static_cast<scalar_t>(acc);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, int group) {
  // Butterfly over the group's lanes: xor offsets below `group` stay inside the group.
  for (int offset = group / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename scalar_t>
__global__ void backward_kernel(
    Sizes z, int group, const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts, const scalar_t* __restrict__ locations,
    const scalar_t* __restrict__ weights, const scalar_t* __restrict__ grad_out,
    at::opmath_type<scalar_t>* __restrict__ grad_value, scalar_t* __restrict__ grad_locations,
    scalar_t* __restrict__ grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int lane = static_cast<int>(thread % group);
  // Lanes past the last row must not return early: the shuffles below need every lane of the
  // warp. They run the same loops on row 0 with nothing loaded and nothing written.
  const bool active = thread / group < z.rows;
  const int64_t row = active ? thread / group : 0;
  const int64_t m = row % z.M;
  const int64_t n = row / z.M / z.Lq;
  const int64_t token_stride = z.M * z.D;
  const scalar_t* g_row = grad_out + row * z.D;

  for (int64_t l = 0; l < z.L; ++l) {
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
    const bool fits = active && level_fits(H, W, start, z.S);
    const int64_t level_offset = ((n * z.S + start) * z.M + m) * z.D;
    for (int64_t p = 0; p < z.P; ++p) {
      const int64_t s = (row * z.L + l) * z.P + p;
      BilinearCorners<acc_t> c;
      acc_t a = 0;
      if (fits) {
        bilinear_corners(
            static_cast<acc_t>(locations[2 * s]), static_cast<acc_t>(locations[2 * s + 1]), H,
            W, c);
        a = static_cast<acc_t>(weights[s]);
      } else {
        c.valid[0] = c.valid[1] = c.valid[2] = c.valid[3] = false;
      }
      // out = a * sum_k w_k v_k, so per channel, with g = grad_out:
      //   d/da += g * sum_k w_k v_k,  d/dx += a * g * sum_k dw_k/dx v_k (same for y),
      //   d/dv_k = a * w_k * g.
      acc_t grad_a = 0, grad_x = 0, grad_y = 0;
      for (int64_t d = lane; d < z.D; d += group) {
        const acc_t g = static_cast<acc_t>(g_row[d]);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (!c.valid[k]) continue;
          const int64_t index = level_offset + c.token[k] * token_stride + d;
          const acc_t gv = g * static_cast<acc_t>(value[index]);
          grad_a += c.weight[k] * gv;
          grad_x += c.dweight_dx[k] * gv;
          grad_y += c.dweight_dy[k] * gv;
          gpuAtomicAdd(grad_value + index, a * c.weight[k] * g);
        }
      }
      grad_a = group_sum(grad_a, group);
      grad_x = group_sum(grad_x, group);
      grad_y = group_sum(grad_y, group);
      if (active && lane == 0) {
        grad_weights[s] = static_cast<scalar_t>(grad_a);
        grad_locations[2 * s] = static_cast<scalar_t>(a * grad_x);
        grad_locations[2 * s + 1] = static_cast<scalar_t>(a * grad_y);
      }
    }
  }
}

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_locations.size(1);
  return Sizes{
      N * Lq * M, Lq, S, M, D, sampling_locations.size(3), sampling_locations.size(4)};
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(const MSDeformAttnInputs& in) {
  const c10::cuda::OptionalCUDAGuard device_guard(in.value.device());
  const Sizes z = sizes_of(in.value, in.sampling_locations);
  at::Tensor out = at::empty({in.value.size(0), z.Lq, z.M * z.D}, in.value.options());
  if (z.rows == 0 || z.D == 0) return out.zero_();
  const int group = group_size_for(z.D);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.value.scalar_type(), "ms_deform_attn_cuda_forward", [&] {
        forward_kernel<scalar_t><<<blocks_for(z.rows, group), kThreadsPerBlock, 0, stream>>>(
            z, group, in.value.data_ptr<scalar_t>(), in.spatial_shapes.data_ptr<int64_t>(),
            in.level_start_index.data_ptr<int64_t>(), in.sampling_locations.data_ptr<scalar_t>(),
            in.attention_weights.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward(
    const MSDeformAttnInputs& in, const at::Tensor& grad_output) {
  const c10::cuda::OptionalCUDAGuard device_guard(in.value.device());
  const Sizes z = sizes_of(in.value, in.sampling_locations);
  const auto acc_dtype = at::toOpMathType(in.value.scalar_type());
  // Atomics accumulate in the opmath dtype (see the note at the top).
  at::Tensor grad_value_acc = at::zeros(in.value.sizes(), in.value.options().dtype(acc_dtype));
  // Every sample's gradient is written exactly once, so these need no zeroing.
  at::Tensor grad_locations = at::empty_like(in.sampling_locations);
  at::Tensor grad_weights = at::empty_like(in.attention_weights);
  if (z.rows == 0 || z.D == 0) {
    grad_locations.zero_();
    grad_weights.zero_();
  } else {
    const int group = group_size_for(z.D);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, in.value.scalar_type(), "ms_deform_attn_cuda_backward", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t><<<blocks_for(z.rows, group), kThreadsPerBlock, 0, stream>>>(
              z, group, in.value.data_ptr<scalar_t>(), in.spatial_shapes.data_ptr<int64_t>(),
              in.level_start_index.data_ptr<int64_t>(), in.sampling_locations.data_ptr<scalar_t>(),
              in.attention_weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
              grad_value_acc.data_ptr<acc_t>(), grad_locations.data_ptr<scalar_t>(),
              grad_weights.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  at::Tensor grad_value =
      grad_value_acc.scalar_type() == in.value.scalar_type()
          ? grad_value_acc
          : grad_value_acc.to(in.value.scalar_type());
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace clusterformer
