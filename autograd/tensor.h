// Tensor: shape, strides, dtype and shared storage, plus its place on the autograd tape.
//
// A Tensor is a cheap handle (shared_ptr to TensorImpl). Views (reshape, transpose, slice) share
// storage and differ in shape/strides/offset. Differentiable tensors are f32; bf16/f16 and the
// block-quantized dtypes are storage for frozen weights and are used through the kernels.
// Quantized tensors are always contiguous and 2-D [rows x cols] (or 1-D), rows block-aligned.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "autograd/dtype.h"

namespace loom {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[4, 512, 576]"
int64_t shape_numel(const Shape& s);

// A byte buffer: owned (64-byte aligned, zeroed unless asked not to; large ones recycled through
// autograd/block_cache.h) or borrowed from elsewhere (e.g. an mmap'ed model file) with a
// keepalive that owns the memory.
class Storage {
 public:
  // zero=false leaves the bytes unset, for outputs the caller overwrites whole; sanitizer builds
  // (LOOM_SANITIZE) fill them with 0xFF, a NaN in every float type, so a missed write shows.
  static std::shared_ptr<Storage> allocate(int64_t nbytes, bool zero = true);
  static std::shared_ptr<Storage> borrow(void* data, int64_t nbytes, std::shared_ptr<void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  int64_t nbytes() const { return nbytes_; }

 private:
  Storage() = default;
  void* data_ = nullptr;
  int64_t nbytes_ = 0;
  bool owned_ = false;
  size_t block_capacity_ = 0;  // > 0: a block of the block cache
  std::shared_ptr<void> owner_;
};

struct Node;  // autograd/tape.h

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements (float dtypes); 0 for quantized
  Shape shape;
  Shape strides;  // in elements
  DType dtype = DType::F32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;  // f32, contiguous, same shape; leaves only
  std::shared_ptr<Node> grad_fn;     // the op that made this tensor, if recorded
  std::string name;                  // for error messages ("blk.0.attn_q.weight")
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Creation. New storage is zero-filled.
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  // Uninitialized (see Storage::allocate): only for outputs every element of which is written.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32);
  static Tensor full(const Shape& shape, float value);
  static Tensor from_vector(const Shape& shape, const std::vector<float>& values);
  // Wraps bytes already laid out as `dtype` (e.g. a GGUF tensor); shape must match their size.
  static Tensor from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype,
                             int64_t offset = 0);
  // Contiguous tensor of `dtype` made from f32 values (quantizing if needed).
  static Tensor quantized_from(const Shape& shape, DType dtype, const std::vector<float>& values);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape()); }
  DType dtype() const;
  int64_t offset() const;
  bool is_contiguous() const;
  const std::string& name() const;
  Tensor& set_name(std::string name);

  // Raw access. data_f32 checks the dtype and returns the pointer at the view's offset.
  float* data_f32() const;
  void* data_bytes() const;  // first byte of this view's data, any dtype
  const std::shared_ptr<Storage>& storage() const;

  // Copies out (f32, logical order; dequantizing if needed). For tests and small tensors.
  std::vector<float> to_vector() const;
  float item() const;

  Tensor contiguous() const;  // self if contiguous, else a copy (recorded on the tape)
  Tensor detach() const;      // same storage, no tape history
  Tensor clone() const;       // new storage, no tape history

  // Autograd.
  bool requires_grad() const;
  Tensor& set_requires_grad(bool on = true);
  Tensor grad() const;  // undefined until a backward reaches this leaf
  void zero_grad();
  const std::shared_ptr<Node>& grad_fn() const;
  // Back-propagates from this tensor; with no argument it must hold one element (seed 1).
  void backward() const;
  void backward(const Tensor& grad_output) const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  const TensorImpl& checked() const;
  std::shared_ptr<TensorImpl> impl_;
};

Shape contiguous_strides(const Shape& shape);

}  // namespace loom
