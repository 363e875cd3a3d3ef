// Multi-scale deformable attention: argument checks, dispatch by device, and the Meta kernels.
//
// Every user-facing error is raised here, before any kernel runs, and names the offending argument.
#include "ms_deform_attn/ms_deform_attn.h"

#include <ATen/ops/empty.h>

#include <string>

namespace clusterformer {
namespace {

constexpr const char* kOp = "ms_deform_attn: ";

void check_device(const at::Tensor& tensor, const char* name, const at::Tensor& value) {
  TORCH_CHECK(
      tensor.device() == value.device(), kOp, name, " is on ", tensor.device(),
      " but value is on ", value.device(), "; move all inputs to one device");
}

void check_dtype(const at::Tensor& tensor, const char* name, const at::Tensor& value) {
  TORCH_CHECK(
      tensor.scalar_type() == value.scalar_type(), kOp, name, " has dtype ",
      tensor.scalar_type(), " but value has ", value.scalar_type(), "; cast them to one dtype");
}

// Checks ranks, sizes, dtypes and devices. Written with symbolic sizes (sym_size / sym_sizes) so
// that the Meta kernels can share it: under torch.compile / torch.export the tensors are fake and
// their sizes may be symbols, on which sizes() throws (for real tensors SymInts are plain ints).
void check_inputs(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  TORCH_CHECK(
      value.dim() == 4, kOp, "value must be (N, S, M, D), got shape ", value.sym_sizes());
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.sym_size(1) == 2, kOp,
      "spatial_shapes must be (L, 2), got shape ", spatial_shapes.sym_sizes());
  const c10::SymInt L = spatial_shapes.sym_size(0);
  TORCH_CHECK(
      level_start_index.dim() == 1 && level_start_index.sym_size(0) == L, kOp,
      "level_start_index must be (L,) = (", L, ",), got shape ", level_start_index.sym_sizes());
  const c10::SymInt N = value.sym_size(0), M = value.sym_size(2);
  TORCH_CHECK(
      sampling_locations.dim() == 6 && sampling_locations.sym_size(0) == N &&
          sampling_locations.sym_size(2) == M && sampling_locations.sym_size(3) == L &&
          sampling_locations.sym_size(5) == 2,
      kOp, "sampling_locations must be (N, Lq, M, L, P, 2) with N=", N, ", M=", M, ", L=", L,
      ", got shape ", sampling_locations.sym_sizes());
  const c10::SymInt Lq = sampling_locations.sym_size(1), P = sampling_locations.sym_size(4);
  TORCH_CHECK(
      attention_weights.dim() == 5 && attention_weights.sym_size(0) == N &&
          attention_weights.sym_size(1) == Lq && attention_weights.sym_size(2) == M &&
          attention_weights.sym_size(3) == L && attention_weights.sym_size(4) == P,
      kOp, "attention_weights must be (N, Lq, M, L, P) = (", N, ", ", Lq, ", ", M, ", ", L, ", ",
      P, "), got shape ", attention_weights.sym_sizes());

  TORCH_CHECK(
      at::isFloatingType(value.scalar_type()), kOp, "value must be a floating tensor, got ",
      value.scalar_type());
  check_dtype(sampling_locations, "sampling_locations", value);
  check_dtype(attention_weights, "attention_weights", value);
  TORCH_CHECK(
      at::isIntegralType(spatial_shapes.scalar_type(), /*includeBool=*/false), kOp,
      "spatial_shapes must be an integer tensor, got ", spatial_shapes.scalar_type());
  TORCH_CHECK(
      at::isIntegralType(level_start_index.scalar_type(), /*includeBool=*/false), kOp,
      "level_start_index must be an integer tensor, got ", level_start_index.scalar_type());

  check_device(spatial_shapes, "spatial_shapes", value);
  check_device(level_start_index, "level_start_index", value);
  check_device(sampling_locations, "sampling_locations", value);
  check_device(attention_weights, "attention_weights", value);
}

// grad_output must be (N, Lq, M * D) like the forward's output, on value's device and dtype.
void check_grad_output(
    const at::Tensor& value, const at::Tensor& sampling_locations, const at::Tensor& grad_output) {
  const c10::SymInt N = value.sym_size(0), M = value.sym_size(2), D = value.sym_size(3);
  const c10::SymInt Lq = sampling_locations.sym_size(1);
  const c10::SymInt MD = M * D;
  TORCH_CHECK(
      grad_output.dim() == 3 && grad_output.sym_size(0) == N && grad_output.sym_size(1) == Lq &&
          grad_output.sym_size(2) == MD,
      kOp, "grad_output must be (N, Lq, M * D) = (", N, ", ", Lq, ", ", MD, "), got shape ",
      grad_output.sym_sizes());
  check_dtype(grad_output, "grad_output", value);
  check_device(grad_output, "grad_output", value);
}

// Checks the inputs; returns contiguous tensors (index tensors as int64).
MSDeformAttnInputs prepare(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  return MSDeformAttnInputs{
      value.contiguous(),
      spatial_shapes.to(at::kLong).contiguous(),
      level_start_index.to(at::kLong).contiguous(),
      sampling_locations.contiguous(),
      attention_weights.contiguous()};
}

void check_cpu_dtype(const at::Tensor& value) {
  const auto dtype = value.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble, kOp,
      "the CPU kernel supports float32 and float64, got ", dtype,
      " (clusterformer.modeling.ops.ms_deform_attn upcasts low-precision CPU inputs)");
}

#ifndef WITH_CUDA
[[noreturn]] void fail_no_cuda() {
  TORCH_CHECK(
      false, kOp,
      "clusterformer._C was built without CUDA kernels; rebuild it with a CUDA toolkit "
      "(FORCE_CUDA=1 python setup.py build_ext --inplace) or use ms_deform_attn_pytorch");
}
#endif

[[noreturn]] void fail_device(const at::Tensor& value) {
  TORCH_CHECK(false, kOp, "no kernel for device ", value.device(), "; use ms_deform_attn_pytorch");
}

}  // namespace

at::Tensor ms_deform_attn_forward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const MSDeformAttnInputs in =
      prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  if (in.value.is_cpu()) {
    check_cpu_dtype(in.value);
    return ms_deform_attn_cpu_forward(in);
  }
  if (in.value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_forward(in);
#else
    fail_no_cuda();
#endif
  }
  fail_device(in.value);
}

std::vector<at::Tensor> ms_deform_attn_backward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  const MSDeformAttnInputs in =
      prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(in.value, in.sampling_locations, grad_output);
  const at::Tensor grad = grad_output.contiguous();

  if (in.value.is_cpu()) {
    check_cpu_dtype(in.value);
    return ms_deform_attn_cpu_backward(in, grad);
  }
  if (in.value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_backward(in, grad);
#else
    fail_no_cuda();
#endif
  }
  fail_device(in.value);
}

// Meta kernels: only shapes, dtypes and devices, no data. FakeTensor (torch.compile, torch.export)
// runs them in place of the device kernels, so they must not read sizes() (symbolic under dynamic
// shapes): the outputs are built from sym_sizes. Same checks as the device kernels, except the
// ones that need data (the level sizes) or the real device (the CPU kernel's dtypes).
at::Tensor ms_deform_attn_meta_forward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const std::vector<c10::SymInt> shape{
      value.sym_size(0), sampling_locations.sym_size(1), value.sym_size(2) * value.sym_size(3)};
  return at::empty_symint(shape, value.options());
}

std::vector<at::Tensor> ms_deform_attn_meta_backward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(value, sampling_locations, grad_output);
  // The device kernels return contiguous gradients shaped like their inputs.
  return {
      at::empty_symint(value.sym_sizes(), value.options()),
      at::empty_symint(sampling_locations.sym_sizes(), sampling_locations.options()),
      at::empty_symint(attention_weights.sym_sizes(), attention_weights.options())};
}

}  // namespace clusterformer
