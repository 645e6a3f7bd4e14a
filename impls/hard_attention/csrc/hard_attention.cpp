// Hard attention: op schemas and CPU kernels (specs/hard_attention.md §2).
//
// glimpse_forward(x, loc, size, scales) -> out [B, scales*C, size, size]
// glimpse_backward(grad_out, loc, H, W, size, scales) -> grad_x [B, C, H, W]
//   (linear in x; loc gets no gradient). The backward gathers per input pixel,
//   so it is deterministic without atomics.
// hard_select_forward(logits, values, gumbel, tau, straight_through) -> (out [B, D], index [B])
// hard_select_backward(grad_out, logits, values, gumbel, index, tau, straight_through)
//   -> (grad_logits [B, N], grad_values [B, N, D])
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "hard_attention.h"

namespace attnbench_hard_attention {
namespace {

void check_glimpse_args(const char* op, const at::Tensor& loc, int64_t B, int64_t size, int64_t scales,
                        const at::Tensor& like) {
  TORCH_CHECK(size >= 1, op, ": size must be >= 1, got ", size);
  TORCH_CHECK(scales >= 1 && scales <= 30, op, ": scales must be in [1, 30], got ", scales);
  TORCH_CHECK(loc.dim() == 2 && loc.size(0) == B && loc.size(1) == 2, op, ": loc must have shape [B, 2] = [", B,
              ", 2], got ", loc.sizes());
  TORCH_CHECK(at::isFloatingType(loc.scalar_type()), op, ": loc must be floating point, got ", loc.scalar_type());
  TORCH_CHECK(loc.device() == like.device(), op, ": loc must be on ", like.device(), ", got ", loc.device());
}

// Centre pixels (cx, cy) per batch element, from loc in double.
std::vector<int64_t> centres(const at::Tensor& loc, int64_t H, int64_t W) {
  const at::Tensor l = loc.to(at::kCPU, at::kDouble).contiguous();
  const double* p = l.data_ptr<double>();
  const int64_t B = l.size(0);
  std::vector<int64_t> c(2 * B);
  for (int64_t b = 0; b < B; ++b) {
    c[2 * b] = center_index(p[2 * b], W);
    c[2 * b + 1] = center_index(p[2 * b + 1], H);
  }
  return c;
}

at::Tensor glimpse_forward_cpu(const at::Tensor& x_in, const at::Tensor& loc, int64_t size, int64_t scales) {
  TORCH_CHECK(x_in.dim() == 4, "glimpse_forward: x must have shape [B, C, H, W], got ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "glimpse_forward: x must be float32 or float64 on CPU, got ", x_in.scalar_type());
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  check_glimpse_args("glimpse_forward", loc, B, size, scales, x_in);
  const at::Tensor x = x_in.contiguous();
  const std::vector<int64_t> c = centres(loc, H, W);
  at::Tensor out = at::empty({B, scales * C, size, size}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "glimpse_forward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // one task per (b, s, c) plane of the output
    at::parallel_for(0, B * scales * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / (scales * C);
        const int64_t s = (task / C) % scales;
        const int64_t ch = task % C;
        const int64_t f = int64_t(1) << s;
        const int64_t r0 = patch_origin(c[2 * b + 1], size, f);
        const int64_t c0 = patch_origin(c[2 * b], size, f);
        const scalar_t* img = xp + (b * C + ch) * H * W;
        scalar_t* dst = op + task * size * size;
        for (int64_t i = 0; i < size; ++i)
          for (int64_t j = 0; j < size; ++j)
            dst[i * size + j] =
                static_cast<scalar_t>(block_mean<scalar_t, double>(img, H, W, r0 + i * f, c0 + j * f, f));
      }
    });
  });
  return out;
}

at::Tensor glimpse_backward_cpu(const at::Tensor& grad_in, const at::Tensor& loc, int64_t H, int64_t W, int64_t size,
                                int64_t scales) {
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(2) == size && grad_in.size(3) == size &&
                  grad_in.size(1) % scales == 0,
              "glimpse_backward: grad_out must have shape [B, scales*C, size, size] with size = ", size,
              ", scales = ", scales, ", got ", grad_in.sizes());
  TORCH_CHECK(grad_in.scalar_type() == at::kFloat || grad_in.scalar_type() == at::kDouble,
              "glimpse_backward: grad_out must be float32 or float64 on CPU, got ", grad_in.scalar_type());
  TORCH_CHECK(H >= 1 && W >= 1, "glimpse_backward: H and W must be >= 1, got ", H, ", ", W);
  const int64_t B = grad_in.size(0), C = grad_in.size(1) / scales;
  check_glimpse_args("glimpse_backward", loc, B, size, scales, grad_in);
  const at::Tensor g = grad_in.contiguous();
  const std::vector<int64_t> c = centres(loc, H, W);
  at::Tensor grad_x = at::zeros({B, C, H, W}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "glimpse_backward_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* dx = grad_x.data_ptr<scalar_t>();
    // one task per (b, c) plane: each pixel gathers from the block containing it
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / C, ch = task % C;
        const scalar_t* gout = gp + b * scales * C * size * size;
        scalar_t* dst = dx + task * H * W;
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x)
            dst[y * W + x] = static_cast<scalar_t>(
                pixel_grad<scalar_t, double>(gout, C, ch, size, scales, c[2 * b + 1], c[2 * b], y, x));
      }
    });
  });
  return grad_x;
}

void check_select_args(const char* op, const at::Tensor& logits, const at::Tensor& values, const at::Tensor& gumbel) {
  TORCH_CHECK(values.dim() == 3, op, ": values must have shape [B, N, D], got ", values.sizes());
  const int64_t B = values.size(0), N = values.size(1);
  TORCH_CHECK(N >= 1, op, ": values must have N >= 1 items, got ", values.sizes());
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == B && logits.size(1) == N, op,
              ": logits must have shape [B, N] = [", B, ", ", N, "], got ", logits.sizes());
  TORCH_CHECK(gumbel.sizes() == logits.sizes(), op, ": gumbel must have shape [", B, ", ", N, "], got ",
              gumbel.sizes());
  TORCH_CHECK(logits.scalar_type() == values.scalar_type() && gumbel.scalar_type() == values.scalar_type(), op,
              ": logits, values and gumbel must share a dtype, got ", logits.scalar_type(), ", ",
              values.scalar_type(), ", ", gumbel.scalar_type());
  TORCH_CHECK(logits.device() == values.device() && gumbel.device() == values.device(), op,
              ": logits, values and gumbel must be on one device, got ", logits.device(), ", ", values.device(), ", ",
              gumbel.device());
}

std::tuple<at::Tensor, at::Tensor> hard_select_forward_cpu(const at::Tensor& logits_in, const at::Tensor& values_in,
                                                           const at::Tensor& gumbel_in, double tau,
                                                           bool straight_through) {
  check_select_args("hard_select_forward", logits_in, values_in, gumbel_in);
  TORCH_CHECK(values_in.scalar_type() == at::kFloat || values_in.scalar_type() == at::kDouble,
              "hard_select_forward: values must be float32 or float64 on CPU, got ", values_in.scalar_type());
  TORCH_CHECK(tau > 0, "hard_select_forward: tau must be > 0, got ", tau);
  const at::Tensor logits = logits_in.contiguous(), values = values_in.contiguous(), gumbel = gumbel_in.contiguous();
  const int64_t B = values.size(0), N = values.size(1), D = values.size(2);
  at::Tensor out = at::empty({B, D}, values.options());
  at::Tensor index = at::empty({B}, values.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "hard_select_forward_cpu", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    const scalar_t* gp = gumbel.data_ptr<scalar_t>();
    const scalar_t* vp = values.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int64_t* ip = index.data_ptr<int64_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t n = gumbel_argmax<scalar_t, double>(lp + b * N, gp + b * N, N);
        ip[b] = n;
        for (int64_t d = 0; d < D; ++d) op[b * D + d] = vp[(b * N + n) * D + d];
      }
    });
  });
  return {out, index};
}

std::tuple<at::Tensor, at::Tensor> hard_select_backward_cpu(const at::Tensor& grad_in, const at::Tensor& logits_in,
                                                            const at::Tensor& values_in, const at::Tensor& gumbel_in,
                                                            const at::Tensor& index_in, double tau,
                                                            bool straight_through) {
  check_select_args("hard_select_backward", logits_in, values_in, gumbel_in);
  const int64_t B = values_in.size(0), N = values_in.size(1), D = values_in.size(2);
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == B && grad_in.size(1) == D,
              "hard_select_backward: grad_out must have shape [B, D] = [", B, ", ", D, "], got ", grad_in.sizes());
  TORCH_CHECK(grad_in.scalar_type() == values_in.scalar_type(), "hard_select_backward: grad_out must be ",
              values_in.scalar_type(), ", got ", grad_in.scalar_type());
  TORCH_CHECK(index_in.dim() == 1 && index_in.size(0) == B && index_in.scalar_type() == at::kLong,
              "hard_select_backward: index must be int64 of shape [", B, "], got ", index_in.scalar_type(), " ",
              index_in.sizes());
  TORCH_CHECK(values_in.scalar_type() == at::kFloat || values_in.scalar_type() == at::kDouble,
              "hard_select_backward: values must be float32 or float64 on CPU, got ", values_in.scalar_type());
  TORCH_CHECK(tau > 0, "hard_select_backward: tau must be > 0, got ", tau);
  const at::Tensor g = grad_in.contiguous(), logits = logits_in.contiguous(), values = values_in.contiguous(),
                   gumbel = gumbel_in.contiguous(), index = index_in.contiguous();
  at::Tensor grad_logits = at::zeros({B, N}, values.options());
  at::Tensor grad_values = at::zeros({B, N, D}, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "hard_select_backward_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    const scalar_t* np = gumbel.data_ptr<scalar_t>();
    const scalar_t* vp = values.data_ptr<scalar_t>();
    const int64_t* ip = index.data_ptr<int64_t>();
    scalar_t* dl = grad_logits.data_ptr<scalar_t>();
    scalar_t* dv = grad_values.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> scratch(straight_through ? 2 * N : 0);  // double accumulation on CPU
      for (int64_t b = begin; b < end; ++b) {
        const int64_t n = ip[b];
        TORCH_CHECK(n >= 0 && n < N, "hard_select_backward: index[", b, "] = ", n, " is outside [0, ", N, ")");
        for (int64_t d = 0; d < D; ++d) dv[(b * N + n) * D + d] = gp[b * D + d];
        if (straight_through)
          straight_through_row<scalar_t, double>(lp + b * N, np + b * N, vp + b * N * D, gp + b * D, N, D,
                                                   tau, scratch.data(), dl + b * N);
      }
    });
  });
  return {grad_logits, grad_values};
}

}  // namespace

TORCH_LIBRARY(attnbench_hard_attention, m) {
  m.def("glimpse_forward(Tensor x, Tensor loc, int size, int scales) -> Tensor");
  m.def("glimpse_backward(Tensor grad_out, Tensor loc, int H, int W, int size, int scales) -> Tensor");
  m.def(
      "hard_select_forward(Tensor logits, Tensor values, Tensor gumbel, float tau, bool straight_through)"
      " -> (Tensor, Tensor)");
  m.def(
      "hard_select_backward(Tensor grad_out, Tensor logits, Tensor values, Tensor gumbel, Tensor index, float tau,"
      " bool straight_through) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(attnbench_hard_attention, CPU, m) {
  m.impl("glimpse_forward", &glimpse_forward_cpu);
  m.impl("glimpse_backward", &glimpse_backward_cpu);
  m.impl("hard_select_forward", &hard_select_forward_cpu);
  m.impl("hard_select_backward", &hard_select_backward_cpu);
}

}  // namespace attnbench_hard_attention
