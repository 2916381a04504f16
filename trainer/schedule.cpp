// Learning-rate schedules (schedule.h).
#include "trainer/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "autograd/check.h"

namespace loom {

LrSchedule LrSchedule::from_recipe(const TrainRecipe& train) {
  LrSchedule s;
  s.kind = train.schedule;
  s.base_lr = train.lr;
  s.warmup_steps = train.warmup_steps;
  s.total_steps = train.steps;
  s.min_lr_ratio = train.min_lr_ratio;
  return s;
}

double LrSchedule::multiplier(int64_t step) const {
  LOOM_CHECK(step >= 0, "learning-rate schedule asked for step {}", step);
  if (step < warmup_steps)
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  if (kind == LrScheduleKind::Constant) return 1.0;
  const double decay_steps = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / decay_steps);
  const double decay = kind == LrScheduleKind::Linear
                           ? 1.0 - progress
                           : 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return min_lr_ratio + (1.0 - min_lr_ratio) * decay;
}

}  // namespace loom
