// The optimizer step's parts: AdamW, global-norm clipping and the learning-rate schedules,
// replayed against PyTorch + transformers (tests/golden/adamw_golden.json, made by
// scripts/make_optim_golden.py), plus state export/import and non-finite detection.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "autograd/check.h"
#include "trainer/clip.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"

namespace loom {
namespace {

using nlohmann::json;

json load_golden() {
  const std::string path = std::string(LOOM_SOURCE_DIR) + "/tests/golden/adamw_golden.json";
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + path + "; run scripts/make_optim_golden.py");
  return json::parse(in);
}

std::vector<float> floats(const json& values) {
  std::vector<float> out;
  for (const json& v : values) out.push_back(static_cast<float>(v.get<double>()));
  return out;
}

void set_grad(const Tensor& param, const std::vector<float>& values) {
  param.impl()->grad = Tensor::from_vector(param.shape(), values).impl_ptr();
}

Tensor param(const Shape& shape, const std::vector<float>& values, const std::string& name) {
  Tensor t = Tensor::from_vector(shape, values);
  t.set_name(name);
  t.set_requires_grad(true);
  return t;
}

LrScheduleKind schedule_kind(const std::string& name) {
  if (name == "constant") return LrScheduleKind::Constant;
  if (name == "linear") return LrScheduleKind::Linear;
  if (name == "cosine") return LrScheduleKind::Cosine;
  throw Error("unknown schedule " + name);
}

// Five steps of clip + AdamW + cosine-with-warmup against torch.optim.AdamW,
// clip_grad_norm_ and transformers' get_cosine_with_min_lr_schedule_with_warmup.
//
// Tolerance: 1e-6 relative (plus 1e-9 absolute for values near 0). loom repeats torch's f32
// operations in the same order, but torch's vectorized kernels may fuse multiply-adds and it
// sums the norm per tensor in f32 (loom in double), so results differ by a few f32 ulps
// (~6e-8 relative each) that compound over the steps; 1e-6 is ~16 ulps, far below what a wrong
// formula gives (the weight-decay term alone moves the parameters by ~1e-3 relative).
TEST(AdamWGolden, MatchesPyTorch) {
  const json golden = load_golden();
  const json& g = golden["adamw"];
  const json& cfg = g["config"];

  NamedTensors params;
  for (const json& p : g["params"])
    params.push_back(
        {p["name"].get<std::string>(),
         param(p["shape"].get<Shape>(), floats(p["values"]), p["name"].get<std::string>())});
  AdamWConfig config;
  config.beta1 = cfg["beta1"];
  config.beta2 = cfg["beta2"];
  config.eps = cfg["eps"];
  config.weight_decay = cfg["weight_decay"];
  AdamW adamw(params, config, cfg["no_decay"].get<std::vector<std::string>>());
  LrSchedule schedule;
  schedule.kind = schedule_kind(cfg["schedule"]);
  schedule.base_lr = cfg["lr"];
  schedule.warmup_steps = cfg["warmup_steps"];
  schedule.total_steps = cfg["total_steps"];
  schedule.min_lr_ratio = cfg["min_lr_ratio"];
  const double max_norm = cfg["max_norm"];

  double max_rel_param = 0, max_rel_norm = 0;
  int64_t step = 0;
  for (const json& s : g["steps"]) {
    SCOPED_TRACE("step " + std::to_string(step));
    for (const NamedTensor& p : params) {
      if (s["grads"].contains(p.name)) {
        set_grad(p.tensor, floats(s["grads"][p.name]));
      } else {
        Tensor(p.tensor).zero_grad();  // torch: p.grad = None, the parameter is skipped
      }
    }
    const double lr = schedule.lr(step);
    EXPECT_NEAR(lr, s["lr"].get<double>(), 1e-15);
    const GradNorm norm = clip_grad_norm(params, max_norm);
    ASSERT_TRUE(norm.finite());
    const double expected_norm = s["grad_norm"];
    max_rel_norm = std::max(max_rel_norm, std::abs(norm.norm - expected_norm) / expected_norm);
    EXPECT_NEAR(norm.norm, expected_norm, 1e-6 * expected_norm);
    adamw.step(lr);
    for (const NamedTensor& p : params) {
      const std::vector<float> expected = floats(s["params"][p.name]);
      const std::vector<float> got = p.tensor.to_vector();
      ASSERT_EQ(got.size(), expected.size());
      for (size_t i = 0; i < got.size(); ++i) {
        const double err = std::abs(static_cast<double>(got[i]) - expected[i]);
        max_rel_param = std::max(max_rel_param, err / std::max(1e-3, std::abs(1.0 * expected[i])));
        EXPECT_LE(err, 1e-6 * std::abs(expected[i]) + 1e-9) << p.name << "[" << i << "]";
      }
    }
    ++step;
  }
  EXPECT_EQ(adamw.steps_taken(), 5);
  // Parameter c had no gradient on step 2: its own count lags, as torch's state['step'].
  const AdamWState state = adamw.state();
  EXPECT_EQ(state.params[0].step, 5);
  EXPECT_EQ(state.params[2].step, 4);
  RecordProperty("max_rel_err_params", std::to_string(max_rel_param));
  RecordProperty("max_rel_err_grad_norm", std::to_string(max_rel_norm));
  std::printf("AdamW vs PyTorch: max relative error %.3g (params), %.3g (grad norm)\n",
              max_rel_param, max_rel_norm);
}

TEST(LrScheduleGolden, MatchesTransformers) {
  const json golden = load_golden();
  for (const json& c : golden["schedules"]) {
    LrSchedule s;
    s.kind = schedule_kind(c["kind"]);
    s.base_lr = 1.0;
    s.warmup_steps = c["warmup_steps"];
    s.total_steps = c["total_steps"];
    s.min_lr_ratio = c["min_lr_ratio"];
    const std::vector<double> expected = c["multipliers"];
    for (size_t step = 0; step < expected.size(); ++step)
      EXPECT_NEAR(s.multiplier(static_cast<int64_t>(step)), expected[step], 1e-15)
          << c["kind"] << " min " << c["min_lr_ratio"] << " step " << step;
  }
}

TEST(LrSchedule, LinearWithMinRatioAndPastTheEnd) {
  LrSchedule s{LrScheduleKind::Linear, 0.1, 2, 12, 0.2};
  EXPECT_DOUBLE_EQ(s.lr(0), 0.0);
  EXPECT_DOUBLE_EQ(s.lr(1), 0.05);
  EXPECT_DOUBLE_EQ(s.lr(2), 0.1);
  EXPECT_DOUBLE_EQ(s.multiplier(7), 0.2 + 0.8 * 0.5);
  EXPECT_DOUBLE_EQ(s.multiplier(12), 0.2);
  EXPECT_DOUBLE_EQ(s.multiplier(20), 0.2);  // stays at the end value
  LrSchedule cosine{LrScheduleKind::Cosine, 1.0, 0, 10, 0.0};
  EXPECT_DOUBLE_EQ(cosine.multiplier(0), 1.0);  // no warmup: full lr at once
  EXPECT_NEAR(cosine.multiplier(15), 0.0, 1e-15);
  EXPECT_THROW(cosine.multiplier(-1), Error);

  TrainRecipe t;
  t.lr = 3e-4;
  t.schedule = LrScheduleKind::Constant;
  t.warmup_steps = 4;
  t.steps = 100;
  const LrSchedule from = LrSchedule::from_recipe(t);
  EXPECT_DOUBLE_EQ(from.lr(2), 1.5e-4);
  EXPECT_DOUBLE_EQ(from.lr(99), 3e-4);
}

TEST(AdamW, OneStepByHand) {
  // Step 1 with bias correction: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps).
  Tensor w = param({3}, {1.0f, -2.0f, 0.5f}, "w");
  set_grad(w, {0.5f, -0.25f, 0.0f});
  AdamWConfig config;
  config.weight_decay = 0.1;
  AdamW adamw({{"w", w}}, config);
  adamw.step(0.01);
  const std::vector<float> got = w.to_vector();
  const double decay = 1.0 - 0.01 * 0.1;
  EXPECT_NEAR(got[0], 1.0 * decay - 0.01 * 0.5 / (0.5 + 1e-8), 1e-7);
  EXPECT_NEAR(got[1], -2.0 * decay + 0.01 * 0.25 / (0.25 + 1e-8), 1e-7);
  EXPECT_NEAR(got[2], 0.5 * decay, 1e-7);
}

TEST(AdamW, StateRoundTripContinuesBitIdentically) {
  auto make = [] {
    return NamedTensors{{"a", param({2, 3}, {1, 2, 3, 4, 5, 6}, "a")},
                        {"b", param({4}, {-1, 0.5, 0.25, 2}, "b")}};
  };
  auto grads_for = [](int step, const NamedTensors& ps) {
    for (const NamedTensor& p : ps) {
      std::vector<float> g(static_cast<size_t>(p.tensor.numel()));
      for (size_t i = 0; i < g.size(); ++i) g[i] = std::sin(0.7f * (step + 1) + 1.3f * i);
      set_grad(p.tensor, g);
    }
  };
  AdamWConfig config;
  config.weight_decay = 0.05;
  NamedTensors ref = make();
  AdamW ref_opt(ref, config);
  for (int s = 0; s < 6; ++s) {
    grads_for(s, ref);
    ref_opt.step(1e-2);
  }

  NamedTensors first = make();
  AdamW first_opt(first, config);
  for (int s = 0; s < 3; ++s) {
    grads_for(s, first);
    first_opt.step(1e-2);
  }
  // "Resume": fresh tensors with the saved values, a fresh optimizer with the saved state.
  NamedTensors resumed = make();
  for (size_t i = 0; i < resumed.size(); ++i)
    std::memcpy(resumed[i].tensor.data_f32(), first[i].tensor.data_f32(),
                sizeof(float) * static_cast<size_t>(first[i].tensor.numel()));
  AdamW resumed_opt(resumed, config);
  resumed_opt.load_state(first_opt.state());
  EXPECT_EQ(resumed_opt.state(), first_opt.state());
  for (int s = 3; s < 6; ++s) {
    grads_for(s, resumed);
    resumed_opt.step(1e-2);
  }
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_EQ(ref[i].tensor.to_vector(), resumed[i].tensor.to_vector()) << ref[i].name;
  EXPECT_EQ(resumed_opt.steps_taken(), 6);
}

TEST(AdamW, LoadStateRejectsMismatch) {
  NamedTensors ps{{"a", param({2, 2}, {1, 2, 3, 4}, "a")}};
  AdamW opt(ps, {});
  AdamWState state = opt.state();
  state.params[0].name = "b";
  try {
    opt.load_state(state);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is b in the state, expected a"), std::string::npos);
  }
  state = opt.state();
  state.params[0].shape = {4};
  EXPECT_THROW(opt.load_state(state), Error);
  state = opt.state();
  state.params.clear();
  EXPECT_THROW(opt.load_state(state), Error);
  EXPECT_THROW(AdamW({{"a", ps[0].tensor}, {"a", ps[0].tensor}}, {}), Error);
  EXPECT_THROW(AdamW(ps, {}, {"missing"}), Error);
}

TEST(Clip, GlobalNormAndCoefficient) {
  Tensor a = param({2}, {0, 0}, "a"), b = param({2}, {0, 0}, "b"), c = param({1}, {0}, "c");
  set_grad(a, {3.0f, 0.0f});
  set_grad(b, {0.0f, 4.0f});  // c has no gradient: left out
  NamedTensors ps{{"a", a}, {"b", b}, {"c", c}};
  GradNorm n = grad_global_norm(ps);
  EXPECT_DOUBLE_EQ(n.norm, 5.0);
  EXPECT_TRUE(n.finite());

  n = clip_grad_norm(ps, 10.0);  // under the limit: untouched
  EXPECT_DOUBLE_EQ(n.norm, 5.0);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<float>{3.0f, 0.0f}));

  n = clip_grad_norm(ps, 1.0);
  EXPECT_DOUBLE_EQ(n.norm, 5.0);  // the norm before clipping, as torch returns it
  const float coef = 1.0f / (5.0f + 1e-6f);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<float>{3.0f * coef, 0.0f}));
  EXPECT_EQ(b.grad().to_vector(), (std::vector<float>{0.0f, 4.0f * coef}));
  EXPECT_NEAR(grad_global_norm(ps).norm, 1.0, 1e-6);

  set_grad(a, {30.0f, 40.0f});
  n = clip_grad_norm(ps, 0.0);  // 0 = no clipping
  EXPECT_EQ(a.grad().to_vector(), (std::vector<float>{30.0f, 40.0f}));
}

TEST(Clip, FindsTheFirstNonFiniteTensor) {
  Tensor a = param({3}, {0, 0, 0}, "blk.0.attn_q.lora_a");
  Tensor b = param({3}, {0, 0, 0}, "blk.1.attn_v.lora_b");
  Tensor c = param({2}, {0, 0}, "blk.2.mlp.lora_a");
  set_grad(a, {1.0f, 2.0f, 3.0f});
  set_grad(b, {1.0f, std::numeric_limits<float>::quiet_NaN(), 1.0f});
  set_grad(c, {std::numeric_limits<float>::infinity(), 1.0f});
  NamedTensors ps{{a.name(), a}, {b.name(), b}, {c.name(), c}};
  const GradNorm n = clip_grad_norm(ps, 1.0);
  ASSERT_FALSE(n.finite());
  EXPECT_EQ(n.nonfinite->tensor, "blk.1.attn_v.lora_b");
  EXPECT_EQ(n.nonfinite->index, 1);
  EXPECT_TRUE(std::isnan(n.norm));
  EXPECT_NE(n.nonfinite->describe().find("gradient of blk.1.attn_v.lora_b is nan at element 1"),
            std::string::npos);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<float>{1.0f, 2.0f, 3.0f}));  // not clipped

  set_grad(b, {1.0f, 1.0f, 1.0f});
  const GradNorm inf = grad_global_norm(ps);
  ASSERT_FALSE(inf.finite());
  EXPECT_EQ(inf.nonfinite->tensor, "blk.2.mlp.lora_a");
  EXPECT_TRUE(std::isinf(inf.nonfinite->value));
}

}  // namespace
}  // namespace loom
