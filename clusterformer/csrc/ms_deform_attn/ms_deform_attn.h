// Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021): declarations.
//
// Tensor layout shared by every kernel (Deformable-DETR notation, all contiguous):
//   value               (N, S, M, D)        S = sum_l H_l * W_l tokens, M heads, D channels/head
//   spatial_shapes      (L, 2)   int64      (H_l, W_l)
//   level_start_index   (L,)     int64      offset of level l in S
//   sampling_locations  (N, Lq, M, L, P, 2) normalised (x, y); pixel centres at (i + 0.5) / W
//   attention_weights   (N, Lq, M, L, P)
//   output              (N, Lq, M * D)
//
// Sampling convention (identical to grid_sample(align_corners=False, padding_mode="zeros")):
// a location (x, y) maps to the continuous pixel coordinate (x * W - 0.5, y * H - 0.5); the four
// neighbouring pixels are blended bilinearly and any neighbour outside the map contributes zero.
#pragma once

// The Tensor class only (not torch/extension.h or ATen/ATen.h): the kernels include the few
// operator headers they use, which keeps compile times down, nvcc's in particular.
#include <ATen/core/Tensor.h>

#include <vector>

namespace clusterformer {

// Device-dispatching entry points (ms_deform_attn.cpp): validate the inputs, make them
// contiguous and call the CPU or CUDA implementation.
at::Tensor ms_deform_attn_forward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights);

// Returns {grad_value, grad_sampling_locations, grad_attention_weights}.
std::vector<at::Tensor> ms_deform_attn_backward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

// Meta kernels (ms_deform_attn.cpp), with the entry points' signatures: output shapes and dtypes
// only, for FakeTensor tracing (torch.compile, torch.export); they accept symbolic sizes.
decltype(ms_deform_attn_forward) ms_deform_attn_meta_forward;
decltype(ms_deform_attn_backward) ms_deform_attn_meta_backward;

// The inputs of the device implementations, as the entry points hand them over: validated (shapes,
// dtypes, devices), contiguous, the index tensors int64, and one floating dtype for value,
// sampling_locations and attention_weights (and grad_output).
struct MSDeformAttnInputs {
  at::Tensor value;
  at::Tensor spatial_shapes;
  at::Tensor level_start_index;
  at::Tensor sampling_locations;
  at::Tensor attention_weights;
};

// Device implementations.
at::Tensor ms_deform_attn_cpu_forward(const MSDeformAttnInputs& in);
std::vector<at::Tensor> ms_deform_attn_cpu_backward(
    const MSDeformAttnInputs& in, const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_cuda_forward(const MSDeformAttnInputs& in);
std::vector<at::Tensor> ms_deform_attn_cuda_backward(
    const MSDeformAttnInputs& in, const at::Tensor& grad_output);
#endif

}  // namespace clusterformer
