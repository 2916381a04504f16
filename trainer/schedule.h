// Learning-rate schedules: constant, linear or cosine decay after a linear warmup, as the
// multiplier Hugging Face transformers' schedules give torch.optim.lr_scheduler.LambdaLR:
//   constant: get_constant_schedule_with_warmup
//   linear:   get_linear_schedule_with_warmup
//   cosine:   get_cosine_schedule_with_warmup (num_cycles 0.5), and with min_lr_ratio > 0
//             get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate = min_lr_ratio).
// `step` is the number of optimizer steps already taken (0 for the first step), the argument
// LambdaLR passes; so with warmup the first step runs at lr 0, exactly as there.
// Linear decay with min_lr_ratio > 0 ends at min_lr_ratio (lr * (min + (1 - min) * linear)), by
// analogy with the cosine one; past total_steps the multiplier stays at its final value (HF's
// cosine would rise again).
#pragma once

#include <cstdint>

#include "trainer/recipe.h"

namespace loom {

struct LrSchedule {
  LrScheduleKind kind = LrScheduleKind::Constant;
  double base_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.0;

  static LrSchedule from_recipe(const TrainRecipe& train);
  // lr(step) / base_lr.
  double multiplier(int64_t step) const;
  double lr(int64_t step) const { return base_lr * multiplier(step); }
};

}  // namespace loom
