// The autograd tape: each differentiable op records a Node holding the inputs that need a
// gradient and a vector-Jacobian product. backward() walks the recorded graph in reverse
// topological order, accumulating gradients (f32); leaves with requires_grad keep theirs in
// .grad(). Gradient mode is per thread (NoGradGuard), like PyTorch's.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "autograd/tensor.h"

namespace loom {

// Given the gradient of the op's output (and the output itself, which the node must not hold
// to avoid a cycle), returns one gradient per recorded input: an undefined Tensor means none.
using VjpFn = std::function<std::vector<Tensor>(const Tensor& grad_out, const Tensor& out)>;

struct Node {
  std::string op;               // op name, for error messages
  std::vector<Tensor> inputs;   // the op's inputs, in the order the vjp returns gradients
  VjpFn vjp;
};

bool grad_enabled();

// Disables recording in a scope (inference, optimizer updates, checkpoint forward).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// True when an op on these inputs must be recorded: grad mode on and any input requires grad.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

// Attaches a Node to `out` (marking it requires_grad) when needs_grad(inputs); returns out.
Tensor record(Tensor out, std::string op, std::vector<Tensor> inputs, VjpFn vjp);

// Back-propagates grad_output from root. Gradients reaching leaves with requires_grad are
// accumulated into their .grad(); the graph's saved tensors are released as it goes.
void run_backward(const Tensor& root, const Tensor& grad_output);

// Activation checkpointing: runs fn(inputs) without recording, and records one node that, during
// backward, re-runs fn with recording on and back-propagates through the recomputed graph.
// Parameters that fn closes over get their gradients as usual. fn must be deterministic
// (dropout takes an explicit seed for this reason).
using CheckpointFn = std::function<Tensor(const std::vector<Tensor>&)>;
Tensor checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                  std::string name = "checkpoint");
// The same, telling fn which run it is: in the Recompute run nothing reads the output's values
// (only its graph is back-propagated), so fn may skip computing them (OutputUse::GraphOnly).
enum class CheckpointRun : uint8_t { Forward, Recompute };
using CheckpointRunFn = std::function<Tensor(const std::vector<Tensor>&, CheckpointRun)>;
Tensor checkpoint(const CheckpointRunFn& fn, const std::vector<Tensor>& inputs,
                  std::string name = "checkpoint");

// A value a checkpointed function keeps from its first run for its recompute: cheap to hold
// next to what it costs to remake (a LoRA projection's u = x A^T, r columns per token;
// attention's output and logsumexp, a product and a softmax pass, and its rounded q, k, v, which
// spare the recompute the q/k/v products). Inside checkpoint()'s
// first run (grad mode on) it runs compute and keeps the result; in the recompute the same calls,
// in the same order, hand back the kept tensors without computing; elsewhere it computes. The
// kept tensors are released after the recompute. A recompute asking for more or fewer than were
// kept is an error (fn must be deterministic).
Tensor keep_for_recompute(const std::function<Tensor()>& compute);

}  // namespace loom
