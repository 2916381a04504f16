// Tensor basics and the autograd tape, exercised with hand-written nodes (no ops library):
// creation, views' strides, detach/clone, storage lifetime, gradient flow and accumulation,
// no-grad scopes, released graphs and checkpoint's recompute.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "autograd/block_cache.h"
#include "autograd/check.h"
#include "autograd/tape.h"
#include "autograd/tensor.h"

namespace loom {
namespace {

// y = a * x (elementwise, a constant), recorded with its vjp.
Tensor times(const Tensor& x, float a, int* calls = nullptr) {
  if (calls) ++*calls;
  Tensor y = Tensor::zeros(x.shape());
  const float* px = x.data_f32();
  float* py = y.data_f32();
  for (int64_t i = 0; i < x.numel(); ++i) py[i] = a * px[i];
  return record(y, "times", {x}, [a](const Tensor& g, const Tensor&) {
    Tensor gx = Tensor::zeros(g.shape());
    for (int64_t i = 0; i < g.numel(); ++i) gx.data_f32()[i] = a * g.data_f32()[i];
    return std::vector<Tensor>{gx};
  });
}

// z = x * y (elementwise), both differentiable.
Tensor product(const Tensor& x, const Tensor& y) {
  Tensor z = Tensor::zeros(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) z.data_f32()[i] = x.data_f32()[i] * y.data_f32()[i];
  return record(z, "product", {x, y}, [x, y](const Tensor& g, const Tensor&) {
    Tensor gx = Tensor::zeros(g.shape()), gy = Tensor::zeros(g.shape());
    for (int64_t i = 0; i < g.numel(); ++i) {
      gx.data_f32()[i] = g.data_f32()[i] * y.data_f32()[i];
      gy.data_f32()[i] = g.data_f32()[i] * x.data_f32()[i];
    }
    return std::vector<Tensor>{gx, gy};
  });
}

// z = x + y, whose vjp hands the one incoming gradient tensor to both inputs (as ops' add does).
Tensor plus(const Tensor& x, const Tensor& y) {
  Tensor z = Tensor::zeros(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) z.data_f32()[i] = x.data_f32()[i] + y.data_f32()[i];
  return record(z, "plus", {x, y}, [](const Tensor& g, const Tensor&) {
    return std::vector<Tensor>{g, g};
  });
}

Tensor sum_all(const Tensor& x) {
  float s = 0;
  for (int64_t i = 0; i < x.numel(); ++i) s += x.data_f32()[i];
  Shape shape = x.shape();
  return record(Tensor::full({1}, s), "sum_all", {x}, [shape](const Tensor& g, const Tensor&) {
    return std::vector<Tensor>{Tensor::full(shape, g.item())};
  });
}

TEST(Tensor, CreationShapesAndStrides) {
  Tensor t = Tensor::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t.strides(), (Shape{3, 1}));
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.size(-1), 3);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(shape_str(t.shape()), "[2, 3]");
  EXPECT_THROW(t.size(2), Error);
  EXPECT_THROW(Tensor::from_vector({2, 2}, {1, 2, 3}), Error);
  EXPECT_THROW(Tensor().shape(), Error);
}

TEST(Tensor, StridedViewReadsInLogicalOrder) {
  Tensor t = Tensor::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
  // A transposed view by hand: same storage, swapped shape and strides.
  auto impl = std::make_shared<TensorImpl>(*t.impl());
  impl->shape = {3, 2};
  impl->strides = {1, 3};
  Tensor tt(impl);
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.to_vector(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  Tensor c = tt.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.to_vector(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  EXPECT_NE(c.data_f32(), t.data_f32());
}

TEST(Tensor, DetachSharesStorageCloneCopies) {
  Tensor t = Tensor::from_vector({3}, {1, 2, 3});
  t.set_requires_grad();
  Tensor d = t.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_EQ(d.data_f32(), t.data_f32());
  Tensor c = t.clone();
  EXPECT_NE(c.data_f32(), t.data_f32());
  c.data_f32()[0] = 42;
  EXPECT_EQ(t.to_vector()[0], 1);
}

TEST(Tensor, BorrowedStorageKeepsOwnerAlive) {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{7, 8});
  std::weak_ptr<std::vector<float>> watch = owner;
  Tensor t = Tensor::from_storage(Storage::borrow(owner->data(), 8, owner), {2}, DType::F32);
  owner.reset();
  EXPECT_FALSE(watch.expired());
  EXPECT_EQ(t.to_vector(), (std::vector<float>{7, 8}));
  t = Tensor();
  EXPECT_TRUE(watch.expired());
}

TEST(Tensor, FromStorageRejectsShortBuffer) {
  auto s = Storage::allocate(16);
  EXPECT_THROW(Tensor::from_storage(s, {5}, DType::F32), Error);
  EXPECT_NO_THROW(Tensor::from_storage(s, {2}, DType::F32, 2));
  EXPECT_THROW(Tensor::from_storage(s, {2}, DType::F32, 3), Error);
}

TEST(Tensor, LargeBuffersAreRecycledAndZerosStaysZero) {
  // 1 MB: served by the block cache. A freed buffer comes back for the next request of its
  // size, dirty; zeros() must still read as zeros and empty() must still be writable.
  const loom::Shape shape = {512, 512};
  const void* first = nullptr;
  {
    Tensor t = Tensor::empty(shape);
    first = t.data_f32();
    float* p = t.data_f32();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = 7.0f;
  }
  Tensor z = Tensor::zeros(shape);
#ifndef LOOM_SANITIZE_BUILD  // sanitizer builds bypass the cache, so that ASan sees every free
  EXPECT_EQ(z.data_f32(), first) << "a freed block of the same size should be reused";
#else
  (void)first;
#endif
  for (float v : z.to_vector()) ASSERT_EQ(v, 0.0f);
  // A different size gets its own block; both stay valid while alive.
  Tensor other = Tensor::full({300, 1000}, 2.5f);
  EXPECT_NE(other.data_f32(), z.data_f32());
  EXPECT_EQ(other.to_vector()[299999], 2.5f);
  loom::trim_block_cache();
  EXPECT_EQ(loom::block_cache_bytes(), size_t{0});
}

TEST(Tensor, BlockCacheKeepsAtMostItsLimit) {
  std::vector<Tensor> held;
  const int64_t per = 8 << 20;  // 32 MB each
  for (size_t i = 0; i * per * 4 < loom::kBlockCacheBytes + 2 * per * 4; ++i)
    held.push_back(Tensor::empty({per}));
  held.clear();  // frees more than the cache keeps
  EXPECT_LE(loom::block_cache_bytes(), loom::kBlockCacheBytes);
  loom::trim_block_cache();
}

TEST(Tensor, OnlyF32CanRequireGrad) {
  Tensor h = Tensor::zeros({4}, DType::BF16);
  EXPECT_THROW(h.set_requires_grad(), Error);
}

TEST(Tape, ChainRuleThroughSharedInput) {
  // loss = sum(x * (3x)) = 3 sum(x^2): d/dx = 6x, through two paths that meet at x.
  Tensor x = Tensor::from_vector({3}, {1, -2, 0.5f});
  x.set_requires_grad();
  Tensor loss = sum_all(product(x, times(x, 3)));
  loss.backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{6, -12, 3}));
}

TEST(Tape, SharedGradientIsCopiedBeforeASecondOneIsAddedToIt) {
  // out = sum((p + q) + p), p = 2x, q = 3x: both sums hand one tensor to each of their inputs,
  // so p's and q's gradients start out as the same memory; p's second gradient must not reach
  // q's. d/dx = 2 * 2 + 3 * 1 = 7 (10 if q's gradient were doubled with p's).
  Tensor x = Tensor::from_vector({3}, {1, -2, 0.5f});
  x.set_requires_grad();
  Tensor p = times(x, 2.0f), q = times(x, 3.0f);
  sum_all(plus(plus(p, q), p)).backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{7, 7, 7}));
}

TEST(Tape, LeafGradientsNeverShareMemory) {
  // plus's vjp hands both leaves one tensor; each leaf's gradient is its own to change (an
  // optimizer clips it in place).
  Tensor a = Tensor::from_vector({2}, {1, 2}), b = Tensor::from_vector({2}, {3, 4});
  a.set_requires_grad();
  b.set_requires_grad();
  sum_all(plus(a, b)).backward();
  EXPECT_NE(a.grad().data_f32(), b.grad().data_f32());
  a.grad().data_f32()[0] = 100.0f;
  EXPECT_EQ(b.grad().to_vector(), (std::vector<float>{1, 1}));
  // The same through a checkpoint, whose recompute's leaves hand their gradients outward.
  Tensor c = Tensor::from_vector({2}, {5, 6});
  c.set_requires_grad();
  Tensor d = checkpoint([](const std::vector<Tensor>& in) { return plus(in[0], in[0]); }, {c});
  sum_all(plus(d, c)).backward();
  EXPECT_EQ(c.grad().to_vector(), (std::vector<float>{3, 3}));
}

TEST(Tape, GradientsAccumulateAcrossBackwardCalls) {
  Tensor x = Tensor::from_vector({2}, {1, 2});
  x.set_requires_grad();
  sum_all(times(x, 2)).backward();
  sum_all(times(x, 5)).backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{7, 7}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Tape, NoGradRecordsNothing) {
  Tensor x = Tensor::from_vector({2}, {1, 2});
  x.set_requires_grad();
  Tensor y;
  {
    NoGradGuard guard;
    EXPECT_FALSE(grad_enabled());
    y = times(x, 2);
  }
  EXPECT_TRUE(grad_enabled());
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(y.grad_fn(), nullptr);
  EXPECT_THROW(sum_all(y).backward(), Error);
}

TEST(Tape, FrozenInputsGetNoGradient) {
  Tensor x = Tensor::from_vector({2}, {1, 2});
  Tensor w = Tensor::from_vector({2}, {3, 4});
  w.set_requires_grad();
  sum_all(product(x, w)).backward();
  EXPECT_FALSE(x.grad().defined());
  EXPECT_EQ(w.grad().to_vector(), (std::vector<float>{1, 2}));
}

TEST(Tape, SecondBackwardThroughReleasedGraphIsAnError) {
  Tensor x = Tensor::from_vector({2}, {1, 2});
  x.set_requires_grad();
  Tensor loss = sum_all(times(x, 2));
  loss.backward();
  EXPECT_THROW(loss.backward(), Error);
}

TEST(Tape, WrongGradientShapeNamesTheOp) {
  Tensor x = Tensor::from_vector({2}, {1, 2});
  x.set_requires_grad();
  Tensor y = record(Tensor::zeros({2}), "broken_op", {x}, [](const Tensor&, const Tensor&) {
    return std::vector<Tensor>{Tensor::zeros({3})};
  });
  try {
    sum_all(y).backward();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken_op"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, SameGradientsAndRecomputesOnce) {
  Tensor x = Tensor::from_vector({3}, {1, 2, 3});
  Tensor w = Tensor::from_vector({3}, {0.5f, -1, 2});
  x.set_requires_grad();
  w.set_requires_grad();
  int calls = 0;
  auto block = [&](const std::vector<Tensor>& in) { return product(times(in[0], 2, &calls), w); };

  sum_all(block({x})).backward();
  std::vector<float> gx = x.grad().to_vector(), gw = w.grad().to_vector();
  x.zero_grad();
  w.zero_grad();

  calls = 0;
  Tensor y = checkpoint(block, {x});
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(y.to_vector(), (std::vector<float>{1, -4, 12}));
  sum_all(y).backward();
  EXPECT_EQ(calls, 2);  // recomputed once during backward
  EXPECT_EQ(x.grad().to_vector(), gx);
  EXPECT_EQ(w.grad().to_vector(), gw);  // the closed-over parameter gets its gradient
}

// keep_for_recompute: the first run computes and keeps, the recompute takes the kept value
// (the same tensor, not recomputed) and the gradients are unchanged; outside a checkpoint, and
// under no-grad, it just computes. A recompute that takes fewer values than were kept throws.
TEST(Checkpoint, KeptValuesAreTakenNotRecomputed) {
  Tensor x = Tensor::from_vector({3}, {1, 2, 3});
  Tensor w = Tensor::from_vector({3}, {0.5f, -1, 2});
  x.set_requires_grad();
  w.set_requires_grad();
  int kept_calls = 0;
  std::vector<const TensorImpl*> seen;
  auto block = [&](const std::vector<Tensor>& in) {
    const Tensor k = keep_for_recompute([&] {
      ++kept_calls;
      return Tensor::from_vector({3}, {3, 3, 3});
    });
    seen.push_back(k.impl());
    return product(product(in[0], k), w);
  };
  sum_all(block({x})).backward();
  EXPECT_EQ(kept_calls, 1);
  const std::vector<float> gx = x.grad().to_vector(), gw = w.grad().to_vector();
  x.zero_grad();
  w.zero_grad();

  kept_calls = 0;
  seen.clear();
  Tensor y = checkpoint(block, {x});
  sum_all(y).backward();
  EXPECT_EQ(kept_calls, 1);  // the recompute took it
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], seen[1]);
  EXPECT_EQ(x.grad().to_vector(), gx);
  EXPECT_EQ(w.grad().to_vector(), gw);

  kept_calls = 0;
  {
    NoGradGuard no_grad;
    checkpoint(block, {x});
    checkpoint(block, {x});
  }
  EXPECT_EQ(kept_calls, 2);

  bool recompute = false;
  auto uneven = [&](const std::vector<Tensor>& in) {
    if (!recompute) keep_for_recompute([] { return Tensor::from_vector({1}, {1}); });
    recompute = true;
    return times(in[0], 2);
  };
  Tensor z = checkpoint(uneven, {x});
  try {
    sum_all(z).backward();
    ADD_FAILURE() << "a recompute that skips a kept value must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("took 0 of the 1 values"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, IdentityFunctionDoesNotAliasItsInput) {
  Tensor x = Tensor::from_vector({2}, {1, 2});
  x.set_requires_grad();
  Tensor y = checkpoint([](const std::vector<Tensor>& in) { return in[0]; }, {x});
  EXPECT_EQ(x.grad_fn(), nullptr);
  sum_all(y).backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{1, 1}));
}

TEST(Checkpoint, UnderNoGradRecordsNothing) {
  Tensor x = Tensor::from_vector({2}, {1, 2});
  x.set_requires_grad();
  NoGradGuard guard;
  Tensor y = checkpoint([](const std::vector<Tensor>& in) { return times(in[0], 3); }, {x});
  EXPECT_EQ(y.grad_fn(), nullptr);
}

}  // namespace
}  // namespace loom
