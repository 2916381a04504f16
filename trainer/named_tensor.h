// A parameter with the name it is saved under ("blk.0.attn_q.weight.lora_a"): what the
// optimizer, the clipping and the checkpoints work on.
#pragma once

#include <string>
#include <vector>

#include "autograd/tensor.h"

namespace loom {

struct NamedTensor {
  std::string name;
  Tensor tensor;  // f32, contiguous; for parameters, its grad() is read
};

using NamedTensors = std::vector<NamedTensor>;

}  // namespace loom
