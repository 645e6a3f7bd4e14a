// DANet PAM and CAM: op schemas and CPU kernels (at::parallel_for over rows).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "danet_ops.h"

namespace attnbench_danet {

struct CpuCamRows {
  static void softmax(const at::Tensor& e, bool paper) {
    const int64_t rows = e.size(0) * e.size(1), C = e.size(2);
    AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "cam softmax (cpu)", [&] {
      scalar_t* p = e.data_ptr<scalar_t>();
      at::parallel_for(0, rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) cam_row_softmax<scalar_t>(p + r * C, C, paper);
      });
    });
  }
  static void backward(const at::Tensor& a, const at::Tensor& da, bool paper) {
    const int64_t rows = a.size(0) * a.size(1), C = a.size(2);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "cam backward (cpu)", [&] {
      const scalar_t* ap = a.data_ptr<scalar_t>();
      scalar_t* dp = da.data_ptr<scalar_t>();
      at::parallel_for(0, rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) cam_row_backward<scalar_t>(ap + r * C, dp + r * C, C, paper);
      });
    });
  }
};

void check_cpu_dtype(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              " (cpu): inputs must be float32 or float64, got ", t.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> pam_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   int64_t key_block) {
  check_cpu_dtype("pam_forward", q);
  return pam_forward<attnbench_tiles::CpuRows>(q, k, v, key_block);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pam_backward_cpu(const at::Tensor& grad_out, const at::Tensor& q,
                                                                const at::Tensor& k, const at::Tensor& v,
                                                                const at::Tensor& out, const at::Tensor& lse,
                                                                int64_t key_block) {
  check_cpu_dtype("pam_backward", q);
  return pam_backward<attnbench_tiles::CpuRows>(grad_out, q, k, v, out, lse, key_block);
}

std::tuple<at::Tensor, at::Tensor> cam_forward_cpu(const at::Tensor& x, c10::string_view sign) {
  check_cpu_dtype("cam_forward", x);
  return cam_forward<CpuCamRows>(x, std::string(sign));
}

at::Tensor cam_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& attn,
                            c10::string_view sign) {
  check_cpu_dtype("cam_backward", x);
  return cam_backward<CpuCamRows>(grad_out, x, attn, std::string(sign));
}

}  // namespace attnbench_danet

TORCH_LIBRARY(attnbench_danet, m) {
  m.def("pam_forward(Tensor q, Tensor k, Tensor v, int key_block) -> (Tensor, Tensor)");
  m.def(
      "pam_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int key_block) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("cam_forward(Tensor x, str sign) -> (Tensor, Tensor)");
  m.def("cam_backward(Tensor grad_out, Tensor x, Tensor attn, str sign) -> Tensor");
}

TORCH_LIBRARY_IMPL(attnbench_danet, CPU, m) {
  m.impl("pam_forward", &attnbench_danet::pam_forward_cpu);
  m.impl("pam_backward", &attnbench_danet::pam_backward_cpu);
  m.impl("cam_forward", &attnbench_danet::cam_forward_cpu);
  m.impl("cam_backward", &attnbench_danet::cam_backward_cpu);
}
