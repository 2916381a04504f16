// Activations: silu(x) = x * sigmoid(x), and Llama's MLP gate swiglu(gate, up) = silu(gate) * up.
// silu'(x) = s + x s (1 - s) with s = sigmoid(x). The loops are the vector kernels of
// vec_kernels.h, run over one contiguous range per thread.
#include "autograd/ops.h"
#include "autograd/ops/common.h"
#include "autograd/ops/vec_kernels.h"

namespace loom {

using namespace ops_detail;

Tensor silu(const Tensor& x_in) {
  check_f32("silu", "x", x_in);
  const Tensor x = contiguous(x_in);
  Tensor y = empty_f32(x.shape());
  const float* px = x.data_f32();
  float* py = y.data_f32();
  const VecKernels& vk = vec_kernels();
  parallel_ranges(x.numel(), [&](int64_t b, int64_t e) { vk.silu_fwd(px + b, py + b, e - b); });
  return record(y, "silu", {x}, [x](const Tensor& g_in, const Tensor&) {
    const Tensor g = dense(g_in);
    Tensor dx = empty_f32(x.shape());
    const float* pg = g.data_f32();
    const float* xs = x.data_f32();
    float* pd = dx.data_f32();
    const VecKernels& vk = vec_kernels();
    parallel_ranges(x.numel(), [&](int64_t b, int64_t e) { vk.silu_bwd(xs + b, pg + b, pd + b, e - b); });
    return std::vector<Tensor>{dx};
  });
}

Tensor swiglu(const Tensor& gate_in, const Tensor& up_in) {
  check_f32("swiglu", "gate", gate_in);
  check_f32("swiglu", "up", up_in);
  LOOM_CHECK(gate_in.shape() == up_in.shape(), "swiglu: gate {} and up {} must have the same shape",
             shape_str(gate_in.shape()), shape_str(up_in.shape()));
  const Tensor gate = contiguous(gate_in);
  const Tensor up = contiguous(up_in);
  Tensor y = empty_f32(gate.shape());
  const float* pgate = gate.data_f32();
  const float* pup = up.data_f32();
  float* py = y.data_f32();
  const VecKernels& vk = vec_kernels();
  parallel_ranges(gate.numel(), [&](int64_t b, int64_t e) { vk.swiglu_fwd(pgate + b, pup + b, py + b, e - b); });
  const bool need_gate = gate.requires_grad(), need_up = up.requires_grad();
  return record(y, "swiglu", {gate, up}, [=](const Tensor& g_in, const Tensor&) {
    const Tensor g = dense(g_in);
    const float* pg = g.data_f32();
    const float* xg = gate.data_f32();
    const float* xu = up.data_f32();
    // Both gradients come out of one pass; one that is not needed is dropped.
    Tensor dgate = empty_f32(gate.shape());
    Tensor dup = empty_f32(up.shape());
    float* pdg = dgate.data_f32();
    float* pdu = dup.data_f32();
    const VecKernels& vk = vec_kernels();
    parallel_ranges(gate.numel(), [&](int64_t b, int64_t e) {
      vk.swiglu_bwd(xg + b, xu + b, pg + b, pdg + b, pdu + b, e - b);
    });
    return std::vector<Tensor>{need_gate ? dgate : Tensor(), need_up ? dup : Tensor()};
  });
}

}  // namespace loom
