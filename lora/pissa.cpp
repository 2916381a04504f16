// PiSSA init from a thin SVD of the base weight (lora/pissa.h).
#include "lora/pissa.h"

#include <fmt/format.h>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <cmath>

#include "autograd/check.h"
#include "lora/qlora.h"

namespace loom {

PissaFactors pissa_factors(const std::vector<float>& weight, int64_t out, int64_t in, int64_t rank,
                           double scale) {
  LOOM_CHECK(static_cast<int64_t>(weight.size()) == out * in,
             "pissa: {} weight values for [{} x {}]", weight.size(), out, in);
  LOOM_CHECK(rank > 0 && rank <= std::min(out, in),
             "pissa: rank {} must be in 1..min(out {}, in {})", rank, out, in);
  LOOM_CHECK(scale > 0.0, "pissa: the LoRA scale must be positive, got {}", scale);
  using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const MatD w = Eigen::Map<const MatF>(weight.data(), out, in).cast<double>();
  // Top-r singular triplets from the eigen-decomposition of the smaller Gram matrix (W^T W or
  // W W^T), in double: min(out, in)^3 work instead of a full SVD's. Squaring costs precision
  // only for singular values below ~1e-8 of the largest, far from the top r that PiSSA keeps.
  const bool by_columns = in <= out;  // Gram over the input side
  const MatD gram = by_columns ? MatD(w.transpose() * w) : MatD(w * w.transpose());
  Eigen::SelfAdjointEigenSolver<MatD> eig(gram);
  LOOM_CHECK(eig.info() == Eigen::Success,
             "pissa: the eigen-decomposition of the [{} x {}] Gram "
             "matrix did not converge",
             gram.rows(), gram.cols());
  const int64_t n = gram.rows();
  PissaFactors f;
  f.a.resize(static_cast<size_t>(rank * in));
  f.b.resize(static_cast<size_t>(out * rank));
  f.singular_values.resize(static_cast<size_t>(rank));
  for (int64_t k = 0; k < rank; ++k) {
    const int64_t col = n - 1 - k;  // eigenvalues come in increasing order
    const double sigma = std::sqrt(std::max(eig.eigenvalues()(col), 0.0));
    f.singular_values[static_cast<size_t>(k)] = sigma;
    // The known side's singular vector, and the other one as W v / sigma (or W^T u / sigma);
    // a zero singular value leaves both factors zero in that direction.
    const Eigen::VectorXd known = eig.eigenvectors().col(col);
    Eigen::VectorXd other =
        by_columns ? Eigen::VectorXd(w * known) : Eigen::VectorXd(w.transpose() * known);
    other = sigma > 0.0 ? Eigen::VectorXd(other / sigma) : Eigen::VectorXd::Zero(other.size());
    const Eigen::VectorXd& v = by_columns ? known : other;  // [in]
    const Eigen::VectorXd& u = by_columns ? other : known;  // [out]
    const double root = std::sqrt(sigma / scale);           // sqrt(S_r / s) on both factors
    for (int64_t j = 0; j < in; ++j)
      f.a[static_cast<size_t>(k * in + j)] = static_cast<float>(root * v(j));
    for (int64_t i = 0; i < out; ++i)
      f.b[static_cast<size_t>(i * rank + k)] = static_cast<float>(root * u(i));
  }
  // Residual from the f32 factors as stored, in double, so residual + s B A reproduces W to f32
  // rounding whatever the factors' own rounding was.
  const MatD ba = Eigen::Map<const MatF>(f.b.data(), out, rank).cast<double>() *
                  Eigen::Map<const MatF>(f.a.data(), rank, in).cast<double>();
  f.residual.resize(weight.size());
  Eigen::Map<MatF>(f.residual.data(), out, in) = (w - scale * ba).cast<float>();
  return f;
}

void pissa_init(Linear& base, LoraAdapter& adapter, DType residual_dtype) {
  const int64_t out = base.out_features(), in = base.in_features(), rank = adapter.rank();
  if (adapter.out_features() != out || adapter.in_features() != in)
    throw Error(fmt::format("pissa: adapter for '{}' [{} x {}] given projection '{}' {}",
                            adapter.hf_name(), adapter.out_features(), adapter.in_features(),
                            base.hf_name, shape_str(base.weight.shape())));
  if (rank > std::min(out, in))
    throw Error(
        fmt::format("pissa: '{}': rank {} exceeds min(out {}, in {}), the number of "
                    "singular values",
                    base.hf_name, rank, out, in));
  PissaFactors f = pissa_factors(base.weight.to_vector(), out, in, rank, adapter.scale());
  adapter.set_lora_a(f.a);
  adapter.set_lora_b(f.b);
  Tensor residual = Tensor::from_vector({out, in}, f.residual);
  residual.set_name(base.weight.name());
  base.weight = convert_weight(residual, residual_dtype);
}

}  // namespace loom
