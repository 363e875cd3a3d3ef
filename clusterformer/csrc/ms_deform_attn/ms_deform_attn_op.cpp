// Multi-scale deformable attention as a dispatcher operator: torch.ops.clusterformer.*.
//
// Registered here:
//   clusterformer::ms_deform_attn           (value, spatial_shapes, level_start_index,
//                                            sampling_locations, attention_weights) -> (N, Lq, M*D)
//   clusterformer::ms_deform_attn_backward  (..., grad_output) -> (grad_value,
//                                            grad_sampling_locations, grad_attention_weights)
// with kernels for CPU, CUDA (when built WITH_CUDA), Meta (shapes only: FakeTensor, hence
// torch.compile and torch.export, trace through it) and Autograd (a C++ autograd function whose
// backward calls the backward op, so AOTAutograd records that op in the backward graph too).
//
// Why an operator and not only the pybind functions: an op called through the dispatcher is one
// node to every tracer (torch.jit.trace, torch.fx / torch.export, dynamo), where a Python
// autograd.Function around pybind calls breaks dynamo's graph and is opaque to the others. Doing
// autograd and Meta in C++ rather than with torch.library's Python decorators works the same on
// every torch this project supports (torch.library.register_autograd / register_fake need
// torch >= 2.4; the reference environment has 2.3).
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <tuple>

#include "ms_deform_attn/ms_deform_attn.h"

namespace clusterformer {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Gradients = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Gradients as_tuple(std::vector<at::Tensor> grads) {
  return {std::move(grads[0]), std::move(grads[1]), std::move(grads[2])};
}

// Backend kernels of the backward op, one per entry point (device-dispatching or Meta): those
// return a vector, the schema a tuple.
template <decltype(ms_deform_attn_backward)* entry_point>
Gradients backward_kernel(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  return as_tuple(entry_point(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      grad_output));
}

// Redispatching through the operator handles (not calling the kernels directly) lets the
// dispatcher pick the backend kernel, or the Meta kernel and a tracer's mode while tracing.
at::Tensor call_forward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("clusterformer::ms_deform_attn", "")
                             .typed<decltype(ms_deform_attn_forward)>();
  return op.call(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
}

Gradients call_backward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("clusterformer::ms_deform_attn_backward", "")
                             .typed<decltype(backward_kernel<ms_deform_attn_backward>)>();
  return op.call(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      grad_output);
}

// First derivatives of the forward op (value, sampling_locations, attention_weights; the index
// tensors get none).
class MSDeformAttnFunction : public torch::autograd::Function<MSDeformAttnFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& value, const at::Tensor& spatial_shapes,
      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
      const at::Tensor& attention_weights) {
    // Below autograd the call reaches the CPU / CUDA / Meta kernel (and any tracing mode).
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = call_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
    ctx->save_for_backward(
        {value, spatial_shapes, level_start_index, sampling_locations, attention_weights});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    // The backward op goes through the dispatcher with autograd on: its own Autograd kernel
    // (below) makes a second derivative an explicit error instead of a silently wrong zero.
    auto [grad_value, grad_locations, grad_weights] = call_backward(
        saved[0], saved[1], saved[2], saved[3], saved[4], grad_outputs[0].contiguous());
    return {
        ctx->needs_input_grad(0) ? grad_value : at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        ctx->needs_input_grad(3) ? grad_locations : at::Tensor(),
        ctx->needs_input_grad(4) ? grad_weights : at::Tensor()};
  }
};

// The backward op is not differentiable (the kernels have first derivatives only, as
// Deformable DETR's); differentiating it raises.
class MSDeformAttnBackwardFunction
    : public torch::autograd::Function<MSDeformAttnBackwardFunction> {
 public:
  static variable_list forward(
      AutogradContext* /*ctx*/,
      const at::Tensor& value,
      const at::Tensor& spatial_shapes,
      const at::Tensor& level_start_index,
      const at::Tensor& sampling_locations,
      const at::Tensor& attention_weights,
      const at::Tensor& grad_output) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_value, grad_locations, grad_weights] = call_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        grad_output);
    return {grad_value, grad_locations, grad_weights};
  }

  static variable_list backward(AutogradContext* /*ctx*/, variable_list /*grad_outputs*/) {
    TORCH_CHECK(
        false,
        "ms_deform_attn: second derivatives are not implemented (the compiled kernels have "
        "first derivatives only); use ms_deform_attn_pytorch for double backward");
  }
};

at::Tensor forward_autograd(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  return MSDeformAttnFunction::apply(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
}

Gradients backward_autograd(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  variable_list grads = MSDeformAttnBackwardFunction::apply(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      grad_output);
  return as_tuple(std::move(grads));
}

}  // namespace

TORCH_LIBRARY(clusterformer, m) {
  // pt2_compliant: the op is functional, has a Meta kernel and registered autograd, so dynamo
  // may keep it in the graph even where only compliant custom ops are allowed.
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

// The same device-dispatching entry points serve both backends: they validate the inputs (naming
// the argument) and call the CPU or CUDA implementation.
TORCH_LIBRARY_IMPL(clusterformer, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward);
  m.impl("ms_deform_attn_backward", &backward_kernel<ms_deform_attn_backward>);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(clusterformer, CUDA, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward);
  m.impl("ms_deform_attn_backward", &backward_kernel<ms_deform_attn_backward>);
}
#endif

TORCH_LIBRARY_IMPL(clusterformer, Meta, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_meta_forward);
  m.impl("ms_deform_attn_backward", &backward_kernel<ms_deform_attn_meta_backward>);
}

TORCH_LIBRARY_IMPL(clusterformer, Autograd, m) {
  m.impl("ms_deform_attn", &forward_autograd);
  m.impl("ms_deform_attn_backward", &backward_autograd);
}

}  // namespace clusterformer
