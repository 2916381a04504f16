// Reverse-mode autograd over recorded Nodes, and activation checkpointing (see tape.h).
#include "autograd/tape.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "autograd/check.h"

namespace loom {
namespace {

thread_local bool g_grad_enabled = true;

// Gradient copies and sums of at least this many floats are split over the OpenMP threads (the
// residual stream's gradients are [tokens x hidden]); kChunk floats per copied piece.
constexpr int64_t kParallelMin = int64_t{1} << 15;
constexpr int64_t kChunk = int64_t{1} << 14;

// What one checkpoint keeps from its first run for its recompute (keep_for_recompute).
struct KeptValues {
  std::vector<Tensor> tensors;
  size_t next = 0;  // the next one the recompute takes
};
// The checkpoint run in progress on this thread, if any: its kept values and whether it is the
// recompute (taking them) or the first run (keeping them).
thread_local KeptValues* g_kept = nullptr;
thread_local bool g_replay = false;

class KeptScope {
 public:
  KeptScope(KeptValues* kept, bool replay) : kept_(g_kept), replay_(g_replay) {
    g_kept = kept;
    g_replay = replay;
  }
  ~KeptScope() {
    g_kept = kept_;
    g_replay = replay_;
  }
  KeptScope(const KeptScope&) = delete;
  KeptScope& operator=(const KeptScope&) = delete;

 private:
  KeptValues* kept_;
  bool replay_;
};

// Re-enables recording inside backward, for checkpoint's recompute.
class GradModeScope {
 public:
  explicit GradModeScope(bool on) : previous_(g_grad_enabled) { g_grad_enabled = on; }
  ~GradModeScope() { g_grad_enabled = previous_; }
  GradModeScope(const GradModeScope&) = delete;
  GradModeScope& operator=(const GradModeScope&) = delete;

 private:
  bool previous_;
};

// A contiguous copy of g that nothing else reaches.
Tensor copy_of(const Tensor& g) {
  Tensor out = Tensor::empty(g.shape());  // written whole below
  if (g.is_contiguous()) {
    const float* src = g.data_f32();
    float* dst = out.data_f32();
    const int64_t n = g.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t c = 0; c < (n + kChunk - 1) / kChunk; ++c)
      std::memcpy(dst + c * kChunk, src + c * kChunk,
                  static_cast<size_t>(std::min(kChunk, n - c * kChunk)) * sizeof(float));
  } else {
    std::vector<float> v = g.to_vector();
    std::copy(v.begin(), v.end(), out.data_f32());
  }
  return out;
}

// Whether g can be stored as a gradient as it is: a plain dense tensor, though other holders
// may still reach its memory (add's vjp hands one tensor to both inputs; a checkpoint's
// recompute starts from the outer gradient). Stored gradients are only read until
// accumulate() or the end of run_backward, which copy one that is still shared before
// anything writes to it: the copies happen only when they must (a residual stream's
// gradient was copied three times per block, ~1% of a training step).
bool storable(const Tensor& g) {
  return g.is_contiguous() && g.offset() == 0 && !g.grad_fn() && !g.requires_grad();
}

// Whether nothing but this handle reaches t's memory.
bool exclusive(const std::shared_ptr<TensorImpl>& t) {
  return t.use_count() == 1 && Tensor(t).storage().use_count() == 1;
}

void add_inplace(const Tensor& dst, const Tensor& src) {
  float* d = dst.data_f32();
  if (src.is_contiguous()) {
    const float* s = src.data_f32();
    const int64_t n = dst.numel();
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) d[i] += s[i];
  } else {
    std::vector<float> v = src.to_vector();
    for (size_t i = 0; i < v.size(); ++i) d[i] += v[i];
  }
}

}  // namespace

bool grad_enabled() { return g_grad_enabled; }

NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Tensor record(Tensor out, std::string op, std::vector<Tensor> inputs, VjpFn vjp) {
  if (!needs_grad(inputs)) return out;
  LOOM_CHECK(out.dtype() == DType::F32, "record '{}': differentiable outputs must be f32, got {}", op, dtype_name(out.dtype()));
  auto node = std::make_shared<Node>();
  node->op = std::move(op);
  node->inputs = std::move(inputs);
  node->vjp = std::move(vjp);
  out.impl()->grad_fn = std::move(node);
  out.impl()->requires_grad = true;
  return out;
}

void run_backward(const Tensor& root, const Tensor& grad_output) {
  LOOM_CHECK(root.defined() && root.requires_grad(),
             "backward: the tensor does not require grad (no trainable parameter reaches it)");
  LOOM_CHECK(grad_output.shape() == root.shape(), "backward: output gradient has shape {}, tensor has {}",
             shape_str(grad_output.shape()), shape_str(root.shape()));
  GradModeScope no_record(false);

  // Topological order by iterative post-order DFS over tensors that have a grad_fn.
  std::vector<std::shared_ptr<TensorImpl>> order;
  std::unordered_set<TensorImpl*> visited;
  struct Frame {
    std::shared_ptr<TensorImpl> t;
    size_t next_input;
  };
  std::vector<Frame> stack;
  if (root.grad_fn()) {
    stack.push_back({root.impl_ptr(), 0});
    visited.insert(root.impl());
  }
  while (!stack.empty()) {
    Frame& f = stack.back();
    Node& node = *f.t->grad_fn;
    if (f.next_input < node.inputs.size()) {
      const Tensor& in = node.inputs[f.next_input++];
      if (in.defined() && in.grad_fn() && in.requires_grad() && visited.insert(in.impl()).second)
        stack.push_back({in.impl_ptr(), 0});
      continue;
    }
    order.push_back(f.t);
    stack.pop_back();
  }

  // Gradients of non-leaf tensors, and the leaves given one here (made exclusive at the end).
  std::unordered_map<TensorImpl*, std::shared_ptr<TensorImpl>> pending;
  std::vector<std::shared_ptr<TensorImpl>> leaves;
  auto deliver = [&](const Tensor& target, const Tensor& g, const std::string& op, size_t index) {
    LOOM_CHECK(g.dtype() == DType::F32 && g.shape() == target.shape(),
               "backward of '{}': gradient for input {} has shape {} ({}), expected {} (f32)", op,
               index, shape_str(g.shape()), dtype_name(g.dtype()), shape_str(target.shape()));
    // A second gradient for the same target is added in place, into a copy first if the
    // stored one is still shared.
    auto accumulate = [&](std::shared_ptr<TensorImpl>& stored) {
      if (!exclusive(stored)) stored = copy_of(Tensor(stored)).impl_ptr();
      add_inplace(Tensor(stored), g);
    };
    if (target.grad_fn()) {
      auto it = pending.find(target.impl());
      if (it == pending.end())
        pending.emplace(target.impl(), storable(g) ? g.impl_ptr() : copy_of(g).impl_ptr());
      else
        accumulate(it->second);
    } else if (target.requires_grad()) {
      std::shared_ptr<TensorImpl>& slot = target.impl()->grad;
      if (!slot) {
        slot = storable(g) ? g.impl_ptr() : copy_of(g).impl_ptr();
        leaves.push_back(target.impl_ptr());
      } else {
        accumulate(slot);
      }
    }
  };

  deliver(root, grad_output, "backward", 0);
  for (size_t i = order.size(); i-- > 0;) {
    const std::shared_ptr<TensorImpl>& t = order[i];
    auto it = pending.find(t.get());
    if (it == pending.end()) continue;  // no gradient flowed here
    Tensor g(std::move(it->second));
    pending.erase(it);
    Node& node = *t->grad_fn;
    LOOM_CHECK(node.vjp != nullptr, "backward through '{}' a second time: the graph was already released", node.op);
    std::vector<Tensor> grads = node.vjp(g, Tensor(t));
    LOOM_CHECK(grads.size() == node.inputs.size(), "backward of '{}': vjp returned {} gradients for {} inputs",
               node.op, grads.size(), node.inputs.size());
    // A vjp may hand back g itself (add: the same tensor for both inputs). Dropping our
    // reference, and each gradient's slot as it is delivered, lets the last holder of a tensor
    // be stored without a copy (copy_of).
    g = Tensor();
    for (size_t k = 0; k < grads.size(); ++k) {
      const Tensor& in = node.inputs[k];
      const Tensor gk = std::move(grads[k]);
      if (!gk.defined() || !in.defined() || !in.requires_grad()) continue;
      deliver(in, gk, node.op, k);
    }
    // Release what the node saved (like PyTorch's retain_graph=False).
    node.vjp = nullptr;
    node.inputs.clear();
  }
  // A leaf's gradient is the caller's to change (an optimizer scales it in place): none may
  // share memory with another holder.
  for (const std::shared_ptr<TensorImpl>& leaf : leaves)
    if (leaf->grad && !exclusive(leaf->grad)) leaf->grad = copy_of(Tensor(leaf->grad)).impl_ptr();
}

Tensor checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs, std::string name) {
  return checkpoint([fn](const std::vector<Tensor>& in, CheckpointRun) { return fn(in); }, inputs,
                    std::move(name));
}

Tensor checkpoint(const CheckpointRunFn& fn, const std::vector<Tensor>& inputs, std::string name) {
  Tensor out;
  // Kept values only when there will be a recompute to take them.
  auto kept = g_grad_enabled ? std::make_shared<KeptValues>() : nullptr;
  {
    NoGradGuard no_record;
    KeptScope keep(kept.get(), false);
    out = fn(inputs, CheckpointRun::Forward);
  }
  if (!g_grad_enabled) return out;
  out = out.detach();  // a fresh handle: fn may have returned one of its inputs itself
  // Always recorded when grad mode is on: parameters inside fn may need gradients even when no
  // input does. The node keeps the inputs and what fn kept through keep_for_recompute, no other
  // intermediate activation.
  auto node = std::make_shared<Node>();
  node->op = std::move(name);
  node->inputs = inputs;
  node->vjp = [fn, inputs, kept, name = node->op](const Tensor& grad_out, const Tensor&) {
    std::vector<Tensor> leaves;
    leaves.reserve(inputs.size());
    for (const Tensor& in : inputs) {
      Tensor leaf = in.detach();
      if (in.requires_grad()) leaf.set_requires_grad(true);
      leaves.push_back(leaf);
    }
    Tensor recomputed;
    {
      GradModeScope record_on(true);
      KeptScope replay(kept.get(), true);
      recomputed = fn(leaves, CheckpointRun::Recompute);
    }
    LOOM_CHECK(kept->next == kept->tensors.size(),
               "checkpoint '{}': the recompute took {} of the {} values its first run kept; the "
               "checkpointed function must run the same way both times",
               name, kept->next, kept->tensors.size());
    kept->tensors.clear();
    if (recomputed.requires_grad()) run_backward(recomputed, grad_out);
    std::vector<Tensor> grads;
    for (const Tensor& leaf : leaves) grads.push_back(leaf.grad());
    return grads;
  };
  out.impl()->grad_fn = std::move(node);
  out.impl()->requires_grad = true;
  return out;
}

Tensor keep_for_recompute(const std::function<Tensor()>& compute) {
  if (g_kept == nullptr) return compute();
  if (!g_replay) {
    Tensor t = compute();
    g_kept->tensors.push_back(t);
    return t;
  }
  LOOM_CHECK(g_kept->next < g_kept->tensors.size(),
             "checkpoint recompute: asked for kept value {} but the first run kept {}; the "
             "checkpointed function must run the same way both times",
             g_kept->next + 1, g_kept->tensors.size());
  return g_kept->tensors[g_kept->next++];
}

}  // namespace loom
