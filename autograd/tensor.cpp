// Tensor and Storage (see tensor.h).
#include "autograd/tensor.h"

#include <cstdlib>
#include <cstring>

#include "autograd/block_cache.h"
#include "autograd/check.h"
#include "autograd/quant/quant.h"
#include "autograd/tape.h"

namespace loom {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

// ---- Storage ----------------------------------------------------------------------------------

std::shared_ptr<Storage> Storage::allocate(int64_t nbytes, bool zero) {
  LOOM_CHECK(nbytes >= 0, "Storage::allocate: negative size {}", nbytes);
  auto s = std::shared_ptr<Storage>(new Storage());
  size_t rounded = (static_cast<size_t>(nbytes) + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  [[maybe_unused]] bool is_zero = false;  // unused by sanitizer builds
#ifdef LOOM_SANITIZE_BUILD
  // Plain malloc, so AddressSanitizer sees every use after free; unset bytes read as NaN.
  const bool cached = false;
#else
  const bool cached = rounded >= kBlockCacheMinBytes;
#endif
  if (cached) {
    const BufferBlock b = acquire_block(rounded);
    s->data_ = b.data;
    s->block_capacity_ = b.capacity;
    is_zero = b.zeroed;
  } else {
    s->data_ = std::aligned_alloc(64, rounded);
    LOOM_CHECK(s->data_ != nullptr, "Storage::allocate: out of memory allocating {} bytes", nbytes);
  }
#ifdef LOOM_SANITIZE_BUILD
  std::memset(s->data_, zero ? 0 : 0xFF, rounded);
#else
  if (zero && !is_zero) std::memset(s->data_, 0, rounded);
#endif
  s->nbytes_ = nbytes;
  s->owned_ = true;
  return s;
}

std::shared_ptr<Storage> Storage::borrow(void* data, int64_t nbytes, std::shared_ptr<void> owner) {
  auto s = std::shared_ptr<Storage>(new Storage());
  s->data_ = data;
  s->nbytes_ = nbytes;
  s->owner_ = std::move(owner);
  return s;
}

Storage::~Storage() {
  if (!owned_) return;
  if (block_capacity_ > 0) release_block(BufferBlock{data_, block_capacity_, false});
  else std::free(data_);
}

// ---- Tensor -----------------------------------------------------------------------------------

const TensorImpl& Tensor::checked() const {
  LOOM_CHECK(impl_ != nullptr, "use of an undefined Tensor");
  return *impl_;
}

static void check_shape(const Shape& shape, const char* what) {
  for (int64_t d : shape) LOOM_CHECK(d >= 0, "{}: negative dimension in shape {}", what, shape_str(shape));
}

static Tensor allocated(const Shape& shape, DType dtype, bool zero, const char* what) {
  check_shape(shape, what);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::allocate(storage_bytes(dtype, shape_numel(shape)), zero);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  return allocated(shape, dtype, true, "Tensor::zeros");
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  return allocated(shape, dtype, false, "Tensor::empty");
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = zeros(shape);
  float* p = t.data_f32();
  for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = value;
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& values) {
  LOOM_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
             "Tensor::from_vector: shape {} needs {} values, got {}", shape_str(shape),
             shape_numel(shape), values.size());
  Tensor t = empty(shape);
  std::memcpy(t.data_f32(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype,
                            int64_t offset) {
  check_shape(shape, "Tensor::from_storage");
  int64_t need = storage_bytes(dtype, shape_numel(shape));
  int64_t elem_offset_bytes = is_quantized(dtype) ? 0 : offset * dtype_info(dtype).block_bytes;
  LOOM_CHECK(!is_quantized(dtype) || offset == 0, "Tensor::from_storage: quantized {} tensor must start at offset 0", dtype_name(dtype));
  LOOM_CHECK(storage && elem_offset_bytes + need <= storage->nbytes(),
             "Tensor::from_storage: {} {} needs {} bytes at offset {}, storage has {}",
             dtype_name(dtype), shape_str(shape), need, elem_offset_bytes,
             storage ? storage->nbytes() : 0);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->offset = offset;
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::quantized_from(const Shape& shape, DType dtype, const std::vector<float>& values) {
  LOOM_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
             "Tensor::quantized_from: shape {} needs {} values, got {}", shape_str(shape),
             shape_numel(shape), values.size());
  std::vector<uint8_t> bytes = quantize(dtype, values.data(), static_cast<int64_t>(values.size()));
  auto storage = Storage::allocate(static_cast<int64_t>(bytes.size()), false);
  std::memcpy(storage->data(), bytes.data(), bytes.size());
  return from_storage(std::move(storage), shape, dtype);
}

const Shape& Tensor::shape() const { return checked().shape; }
const Shape& Tensor::strides() const { return checked().strides; }
DType Tensor::dtype() const { return checked().dtype; }
int64_t Tensor::offset() const { return checked().offset; }
const std::string& Tensor::name() const { return checked().name; }
const std::shared_ptr<Storage>& Tensor::storage() const { return checked().storage; }

Tensor& Tensor::set_name(std::string name) {
  checked();
  impl_->name = std::move(name);
  return *this;
}

int64_t Tensor::size(int64_t d) const {
  int64_t n = dim();
  int64_t i = d < 0 ? d + n : d;
  LOOM_CHECK(i >= 0 && i < n, "Tensor::size: dimension {} out of range for shape {}", d, shape_str(shape()));
  return shape()[i];
}

bool Tensor::is_contiguous() const {
  const TensorImpl& t = checked();
  int64_t expected = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] == 1) continue;
    if (t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

float* Tensor::data_f32() const {
  const TensorImpl& t = checked();
  LOOM_CHECK(t.dtype == DType::F32, "tensor '{}' {} is {}, expected f32", t.name, shape_str(t.shape), dtype_name(t.dtype));
  return static_cast<float*>(t.storage->data()) + t.offset;
}

void* Tensor::data_bytes() const {
  const TensorImpl& t = checked();
  if (is_quantized(t.dtype)) return t.storage->data();
  return static_cast<uint8_t*>(t.storage->data()) + t.offset * dtype_info(t.dtype).block_bytes;
}

std::vector<float> Tensor::to_vector() const {
  const TensorImpl& t = checked();
  int64_t n = numel();
  std::vector<float> out(static_cast<size_t>(n));
  if (is_quantized(t.dtype) || t.dtype != DType::F32) {
    LOOM_CHECK(is_contiguous(), "to_vector: non-contiguous {} tensor", dtype_name(t.dtype));
    dequantize(t.dtype, data_bytes(), n, 0, n, out.data());
    return out;
  }
  // Strided f32 gather in logical (row-major) order.
  const float* base = data_f32();
  Shape index(t.shape.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t off = 0;
    for (size_t d = 0; d < index.size(); ++d) off += index[d] * t.strides[d];
    out[static_cast<size_t>(i)] = base[off];
    for (size_t d = index.size(); d-- > 0;) {
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

float Tensor::item() const {
  LOOM_CHECK(numel() == 1, "Tensor::item: tensor {} has {} elements, expected 1", shape_str(shape()), numel());
  return to_vector()[0];
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = from_vector(shape(), to_vector());
  return record(out, "contiguous", {*this},
                [](const Tensor& g, const Tensor&) { return std::vector<Tensor>{g}; });
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>(checked());
  impl->requires_grad = false;
  impl->grad = nullptr;
  impl->grad_fn = nullptr;
  return Tensor(std::move(impl));
}

Tensor Tensor::clone() const {
  const TensorImpl& t = checked();
  if (t.dtype == DType::F32) return from_vector(t.shape, to_vector()).set_name(t.name);
  LOOM_CHECK(is_contiguous(), "Tensor::clone: non-contiguous {} tensor", dtype_name(t.dtype));
  int64_t nbytes = storage_bytes(t.dtype, numel());
  auto storage = Storage::allocate(nbytes);
  std::memcpy(storage->data(), data_bytes(), static_cast<size_t>(nbytes));
  return from_storage(std::move(storage), t.shape, t.dtype).set_name(t.name);
}

bool Tensor::requires_grad() const { return checked().requires_grad; }

Tensor& Tensor::set_requires_grad(bool on) {
  const TensorImpl& t = checked();
  LOOM_CHECK(!on || t.dtype == DType::F32, "set_requires_grad: tensor '{}' is {}; only f32 tensors can be trained",
             t.name, dtype_name(t.dtype));
  LOOM_CHECK(t.grad_fn == nullptr || on, "set_requires_grad(false) on a non-leaf tensor '{}'; use detach()", t.name);
  impl_->requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const {
  const TensorImpl& t = checked();
  return t.grad ? Tensor(t.grad) : Tensor();
}

void Tensor::zero_grad() {
  checked();
  impl_->grad = nullptr;
}

const std::shared_ptr<Node>& Tensor::grad_fn() const { return checked().grad_fn; }

void Tensor::backward() const {
  LOOM_CHECK(numel() == 1, "backward(): tensor {} is not a scalar; pass the output gradient", shape_str(shape()));
  backward(full(shape(), 1.0f));
}

void Tensor::backward(const Tensor& grad_output) const { run_backward(*this, grad_output); }

}  // namespace loom
