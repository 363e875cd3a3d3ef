// Python bindings of clusterformer._C. Each op's entry points dispatch by device themselves.
//
// Importing the module also registers the dispatcher operators of ms_deform_attn_op.cpp
// (torch.ops.clusterformer.ms_deform_attn and its backward), which is what
// clusterformer.modeling.ops calls; the pybind functions below call the same kernels without
// autograd, for tests and benchmarks of the raw kernels.
//
// torch/csrc/utils/pybind.h (pybind11 plus the at::Tensor casters) rather than torch/extension.h,
// which drags in the whole C++ frontend and doubles this file's compile time.
#include <torch/csrc/utils/pybind.h>

#include "ms_deform_attn/ms_deform_attn.h"

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ClusterFormer's compiled ops (CPU kernels always; CUDA kernels when built with CUDA)";
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def(
      "ms_deform_attn_forward", &clusterformer::ms_deform_attn_forward,
      "Multi-scale deformable attention forward -> (N, Lq, M * D)", py::arg("value"),
      py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
      py::arg("attention_weights"));
  m.def(
      "ms_deform_attn_backward", &clusterformer::ms_deform_attn_backward,
      "Multi-scale deformable attention backward -> [grad_value, grad_sampling_locations, "
      "grad_attention_weights]",
      py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"),
      py::arg("sampling_locations"), py::arg("attention_weights"), py::arg("grad_output"));
}
