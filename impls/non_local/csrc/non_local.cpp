// Non-local block: op schemas and CPU kernels (at::parallel_for over query rows).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "non_local_ops.h"

namespace attnbench_nl {

struct CpuConcatRows {
  // f[i, j] = ReLU(a_i + b_j) / M: [N, T]
  static at::Tensor forward(const at::Tensor& a, const at::Tensor& b, double inv_m) {
    const int64_t N = a.size(0), T = b.size(0);
    auto f = at::empty({N, T}, a.options());
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "nl concat forward (cpu)", [&] {
      const scalar_t* ap = a.data_ptr<scalar_t>();
      const scalar_t* bp = b.data_ptr<scalar_t>();
      scalar_t* fp = f.data_ptr<scalar_t>();
      const scalar_t im = static_cast<scalar_t>(inv_m);
      at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(T, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t j = 0; j < T; ++j) fp[i * T + j] = concat_weight<scalar_t>(ap[i], bp[j], im);
      });
    });
    return f;
  }
  // df[i, j] <- ReLU'(a_i + b_j) · df[i, j] / M (in place)
  static void backward(const at::Tensor& a, const at::Tensor& b, const at::Tensor& df, double inv_m) {
    const int64_t N = a.size(0), T = b.size(0);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "nl concat backward (cpu)", [&] {
      const scalar_t* ap = a.data_ptr<scalar_t>();
      const scalar_t* bp = b.data_ptr<scalar_t>();
      scalar_t* dp = df.data_ptr<scalar_t>();
      const scalar_t im = static_cast<scalar_t>(inv_m);
      at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(T, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t j = 0; j < T; ++j) dp[i * T + j] = concat_weight_grad<scalar_t>(ap[i], bp[j], dp[i * T + j], im);
      });
    });
  }
};

std::tuple<at::Tensor, at::Tensor> nl_forward_cpu(const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
                                                  const c10::optional<at::Tensor>& w, c10::string_view mode,
                                                  double scale, int64_t key_block) {
  TORCH_CHECK(theta.scalar_type() == at::kFloat || theta.scalar_type() == at::kDouble,
              "nl_forward (cpu): theta must be float32 or float64, got ", theta.scalar_type());
  return nl_forward<attnbench_tiles::CpuRows, CpuConcatRows>(theta, phi, g, w, std::string(mode), scale, key_block);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nl_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
    const c10::optional<at::Tensor>& w, const at::Tensor& out, const at::Tensor& stats, c10::string_view mode,
    double scale, int64_t key_block) {
  TORCH_CHECK(theta.scalar_type() == at::kFloat || theta.scalar_type() == at::kDouble,
              "nl_backward (cpu): theta must be float32 or float64, got ", theta.scalar_type());
  return nl_backward<attnbench_tiles::CpuRows, CpuConcatRows>(grad_out, theta, phi, g, w, out, stats,
                                                              std::string(mode), scale, key_block);
}

}  // namespace attnbench_nl

TORCH_LIBRARY(attnbench_non_local, m) {
  m.def(
      "nl_forward(Tensor theta, Tensor phi, Tensor g, Tensor? w, str mode, float scale, int key_block) "
      "-> (Tensor, Tensor)");
  m.def(
      "nl_backward(Tensor grad_out, Tensor theta, Tensor phi, Tensor g, Tensor? w, Tensor out, Tensor stats, "
      "str mode, float scale, int key_block) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(attnbench_non_local, CPU, m) {
  m.impl("nl_forward", &attnbench_nl::nl_forward_cpu);
  m.impl("nl_backward", &attnbench_nl::nl_backward_cpu);
}
