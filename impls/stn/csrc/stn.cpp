// Spatial transformer CPU kernels and the op schema (TORCH_LIBRARY attnbench_stn).
//
// bilinear_forward / bilinear_backward: the sampler of shared/specs/stn.md §2, zeros
// padding per corner, floor-convention gradients. Parallel over output rows (b, i);
// each row computes its Wo corner sets once and loops over channels inside.
// The input gradient is deterministic: each plane (b, c) of it is written by one
// thread, contributions added in output-point order, so results are bitwise equal
// whatever the thread count or parallel split.
//
// affine_grid_forward / affine_grid_backward: grid = theta · (x, y, 1); dtheta sums over
// the grid in double, one batch element per thread (deterministic).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "stn.h"

namespace attnbench_stn {
namespace {

void check_sample_args(const char* op, const at::Tensor& inp, const at::Tensor& grid) {
  TORCH_CHECK(inp.dim() == 4, op, ": inp must have shape [B, C, H, W], got ", inp.sizes());
  TORCH_CHECK(grid.dim() == 4 && grid.size(3) == 2, op, ": grid must have shape [B, Ho, Wo, 2], got ", grid.sizes());
  TORCH_CHECK(grid.size(0) == inp.size(0), op, ": grid batch ", grid.size(0), " != inp batch ", inp.size(0));
  TORCH_CHECK(inp.size(2) > 0 && inp.size(3) > 0, op, ": inp must have H, W >= 1, got ", inp.sizes());
  TORCH_CHECK(inp.scalar_type() == grid.scalar_type(), op, ": inp and grid must have the same dtype, got ",
              inp.scalar_type(), " and ", grid.scalar_type());
  TORCH_CHECK(at::isFloatingType(inp.scalar_type()), op, ": inp must be floating point, got ", inp.scalar_type());
  TORCH_CHECK(inp.device() == grid.device(), op, ": inp and grid must be on the same device, got ", inp.device(),
              " and ", grid.device());
}

constexpr int64_t kSerialWork = 32768;  // output elements below which a kernel runs on one thread

int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kSerialWork / std::max<int64_t>(1, work_per_item));
}

template <typename scalar_t>
void bilinear_forward_kernel(const scalar_t* inp, const scalar_t* grid, scalar_t* out, int64_t B, int64_t C,
                             int64_t H, int64_t W, int64_t Ho, int64_t Wo, bool align_corners) {
  at::parallel_for(0, B * Ho, grain(Wo * C), [&](int64_t begin, int64_t end) {
    std::vector<Bilinear<scalar_t>> row(Wo);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / Ho, i = r % Ho;
      const scalar_t* g = grid + r * Wo * 2;
      for (int64_t j = 0; j < Wo; ++j) row[j] = bilinear_point<scalar_t>(g[2 * j], g[2 * j + 1], H, W, align_corners);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* plane = inp + (b * C + c) * H * W;
        scalar_t* o = out + ((b * C + c) * Ho + i) * Wo;
        for (int64_t j = 0; j < Wo; ++j) o[j] = interpolate(row[j], plane);
      }
    }
  });
}

// Input gradient of the rows [i_begin, i_end) of batch element b, all channels (the caller
// owns planes (b, c_begin..c_end)), and optionally the grid gradient of those rows.
template <typename scalar_t>
void bilinear_backward_rows(const scalar_t* gout, const scalar_t* inp, const scalar_t* grid, scalar_t* ginp,
                            scalar_t* ggrid, int64_t b, int64_t c_begin, int64_t c_end, int64_t C, int64_t H,
                            int64_t W, int64_t Ho, int64_t Wo, bool align_corners, bool want_input,
                            std::vector<Bilinear<scalar_t>>& row, std::vector<scalar_t>& dix,
                            std::vector<scalar_t>& diy, int64_t i) {
  const scalar_t* g = grid + (b * Ho + i) * Wo * 2;
  for (int64_t j = 0; j < Wo; ++j) row[j] = bilinear_point<scalar_t>(g[2 * j], g[2 * j + 1], H, W, align_corners);
  if (ggrid != nullptr) std::fill(dix.begin(), dix.end(), scalar_t(0)), std::fill(diy.begin(), diy.end(), scalar_t(0));
  for (int64_t c = c_begin; c < c_end; ++c) {
    const scalar_t* go = gout + ((b * C + c) * Ho + i) * Wo;
    const scalar_t* plane = inp + (b * C + c) * H * W;
    scalar_t* gplane = ginp + (b * C + c) * H * W;
    for (int64_t j = 0; j < Wo; ++j) {
      const Bilinear<scalar_t>& p = row[j];
      if (want_input) {
        for (int k = 0; k < 4; ++k)
          if (p.inside[k]) gplane[p.offset[k]] += p.weight[k] * go[j];
      }
      if (ggrid != nullptr) {
        scalar_t v[4];
        for (int k = 0; k < 4; ++k) v[k] = corner_value(p, plane, k);
        add_grid_grad(p, v, go[j], dix[j], diy[j]);
      }
    }
  }
  if (ggrid != nullptr) {
    const scalar_t sx = grad_scale<scalar_t>(W, align_corners), sy = grad_scale<scalar_t>(H, align_corners);
    scalar_t* gg = ggrid + (b * Ho + i) * Wo * 2;
    for (int64_t j = 0; j < Wo; ++j) gg[2 * j] = dix[j] * sx, gg[2 * j + 1] = diy[j] * sy;
  }
}

template <typename scalar_t>
void bilinear_backward_kernel(const scalar_t* gout, const scalar_t* inp, const scalar_t* grid, scalar_t* ginp,
                              scalar_t* ggrid, int64_t B, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                              bool align_corners) {
  const int64_t work = B * C * Ho * Wo;
  if (B >= at::get_num_threads() || B * C == 1 || work < kSerialWork) {
    // One pass: a thread owns whole batch elements (their input-gradient planes and grid rows);
    // small problems run inline (waking the thread pool costs more than they do).
    at::parallel_for(0, B, work < kSerialWork ? B : 1, [&](int64_t begin, int64_t end) {
      std::vector<Bilinear<scalar_t>> row(Wo);
      std::vector<scalar_t> dix(Wo), diy(Wo);
      for (int64_t b = begin; b < end; ++b)
        for (int64_t i = 0; i < Ho; ++i)
          bilinear_backward_rows(gout, inp, grid, ginp, ggrid, b, 0, C, C, H, W, Ho, Wo, align_corners, true, row,
                                 dix, diy, i);
    });
    return;
  }
  // Fewer batch elements than threads: input gradient parallel over planes (b, c) (corners
  // recomputed per plane), grid gradient parallel over rows. Same summation order as above.
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<Bilinear<scalar_t>> row(Wo);
    std::vector<scalar_t> dix(Wo), diy(Wo);
    for (int64_t bc = begin; bc < end; ++bc)
      for (int64_t i = 0; i < Ho; ++i)
        bilinear_backward_rows<scalar_t>(gout, inp, grid, ginp, nullptr, bc / C, bc % C, bc % C + 1, C, H, W, Ho, Wo,
                                         align_corners, true, row, dix, diy, i);
  });
  at::parallel_for(0, B * Ho, grain(Wo * C), [&](int64_t begin, int64_t end) {
    std::vector<Bilinear<scalar_t>> row(Wo);
    std::vector<scalar_t> dix(Wo), diy(Wo);
    for (int64_t r = begin; r < end; ++r)
      bilinear_backward_rows(gout, inp, grid, ginp, ggrid, r / Ho, 0, C, C, H, W, Ho, Wo, align_corners, false, row,
                             dix, diy, r % Ho);
  });
}

at::Tensor bilinear_forward_cpu(const at::Tensor& inp_, const at::Tensor& grid_, bool align_corners) {
  check_sample_args("bilinear_forward", inp_, grid_);
  const at::Tensor inp = inp_.contiguous(), grid = grid_.contiguous();
  const int64_t B = inp.size(0), C = inp.size(1), H = inp.size(2), W = inp.size(3);
  const int64_t Ho = grid.size(1), Wo = grid.size(2);
  at::Tensor out = at::empty({B, C, Ho, Wo}, inp.options());
  AT_DISPATCH_FLOATING_TYPES(inp.scalar_type(), "bilinear_forward", [&] {
    bilinear_forward_kernel<scalar_t>(inp.data_ptr<scalar_t>(), grid.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                      B, C, H, W, Ho, Wo, align_corners);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bilinear_backward_cpu(const at::Tensor& gout_, const at::Tensor& inp_,
                                                         const at::Tensor& grid_, bool align_corners) {
  check_sample_args("bilinear_backward", inp_, grid_);
  const int64_t B = inp_.size(0), C = inp_.size(1), H = inp_.size(2), W = inp_.size(3);
  const int64_t Ho = grid_.size(1), Wo = grid_.size(2);
  TORCH_CHECK(gout_.sizes() == at::IntArrayRef({B, C, Ho, Wo}), "bilinear_backward: grad_out must have shape [", B,
              ", ", C, ", ", Ho, ", ", Wo, "], got ", gout_.sizes());
  TORCH_CHECK(gout_.scalar_type() == inp_.scalar_type(), "bilinear_backward: grad_out must have dtype ",
              inp_.scalar_type(), ", got ", gout_.scalar_type());
  const at::Tensor gout = gout_.contiguous(), inp = inp_.contiguous(), grid = grid_.contiguous();
  at::Tensor ginp = at::zeros({B, C, H, W}, inp.options());  // accumulated into
  at::Tensor ggrid = at::empty({B, Ho, Wo, 2}, grid.options());
  AT_DISPATCH_FLOATING_TYPES(inp.scalar_type(), "bilinear_backward", [&] {
    bilinear_backward_kernel<scalar_t>(gout.data_ptr<scalar_t>(), inp.data_ptr<scalar_t>(),
                                       grid.data_ptr<scalar_t>(), ginp.data_ptr<scalar_t>(),
                                       ggrid.data_ptr<scalar_t>(), B, C, H, W, Ho, Wo, align_corners);
  });
  return {ginp, ggrid};
}

void check_affine_theta(const at::Tensor& theta, int64_t H, int64_t W) {
  TORCH_CHECK(theta.dim() == 3 && theta.size(1) == 2 && theta.size(2) == 3,
              "affine_grid_forward: theta must have shape [B, 2, 3], got ", theta.sizes());
  TORCH_CHECK(at::isFloatingType(theta.scalar_type()), "affine_grid_forward: theta must be floating point, got ",
              theta.scalar_type());
  TORCH_CHECK(H >= 1 && W >= 1, "affine_grid_forward: H and W must be >= 1, got ", H, " and ", W);
}

at::Tensor affine_grid_forward_cpu(const at::Tensor& theta_, int64_t H, int64_t W, bool align_corners) {
  check_affine_theta(theta_, H, W);
  const at::Tensor theta = theta_.contiguous();
  const int64_t B = theta.size(0);
  at::Tensor grid = at::empty({B, H, W, 2}, theta.options());
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "affine_grid_forward", [&] {
    const scalar_t* th = theta.data_ptr<scalar_t>();
    scalar_t* out = grid.data_ptr<scalar_t>();
    at::parallel_for(0, B * H, grain(W), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, i = r % H;
        const scalar_t y = base_coord<scalar_t>(i, H, align_corners);
        for (int64_t j = 0; j < W; ++j) {
          scalar_t gx, gy;
          affine_point(th + b * 6, base_coord<scalar_t>(j, W, align_corners), y, gx, gy);
          out[(r * W + j) * 2] = gx;
          out[(r * W + j) * 2 + 1] = gy;
        }
      }
    });
  });
  return grid;
}

at::Tensor affine_grid_backward_cpu(const at::Tensor& ggrid_, int64_t H, int64_t W, bool align_corners) {
  TORCH_CHECK(ggrid_.dim() == 4 && ggrid_.size(1) == H && ggrid_.size(2) == W && ggrid_.size(3) == 2,
              "affine_grid_backward: grad_grid must have shape [B, ", H, ", ", W, ", 2], got ", ggrid_.sizes());
  TORCH_CHECK(at::isFloatingType(ggrid_.scalar_type()), "affine_grid_backward: grad_grid must be floating point");
  const at::Tensor ggrid = ggrid_.contiguous();
  const int64_t B = ggrid.size(0);
  at::Tensor dtheta = at::zeros({B, 2, 3}, ggrid.options());
  AT_DISPATCH_FLOATING_TYPES(ggrid.scalar_type(), "affine_grid_backward", [&] {
    const scalar_t* g = ggrid.data_ptr<scalar_t>();
    scalar_t* dt = dtheta.data_ptr<scalar_t>();
    at::parallel_for(0, B, B * H * W < kSerialWork ? B : 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        double acc[6] = {0, 0, 0, 0, 0, 0};
        for (int64_t i = 0; i < H; ++i) {
          const double y = base_coord<double>(i, H, align_corners);
          for (int64_t j = 0; j < W; ++j) {
            const double x = base_coord<double>(j, W, align_corners);
            const scalar_t* gp = g + ((b * H + i) * W + j) * 2;
            for (int r = 0; r < 2; ++r) {
              const double gr = static_cast<double>(gp[r]);
              acc[3 * r] += gr * x;
              acc[3 * r + 1] += gr * y;
              acc[3 * r + 2] += gr;
            }
          }
        }
        for (int k = 0; k < 6; ++k) dt[b * 6 + k] = static_cast<scalar_t>(acc[k]);
      }
    });
  });
  return dtheta;
}

}  // namespace
}  // namespace attnbench_stn

TORCH_LIBRARY(attnbench_stn, m) {
  m.def("bilinear_forward(Tensor inp, Tensor grid, bool align_corners) -> Tensor");
  m.def("bilinear_backward(Tensor grad_out, Tensor inp, Tensor grid, bool align_corners) -> (Tensor, Tensor)");
  m.def("affine_grid_forward(Tensor theta, int H, int W, bool align_corners) -> Tensor");
  m.def("affine_grid_backward(Tensor grad_grid, int H, int W, bool align_corners) -> Tensor");
}

TORCH_LIBRARY_IMPL(attnbench_stn, CPU, m) {
  m.impl("bilinear_forward", &attnbench_stn::bilinear_forward_cpu);
  m.impl("bilinear_backward", &attnbench_stn::bilinear_backward_cpu);
  m.impl("affine_grid_forward", &attnbench_stn::affine_grid_forward_cpu);
  m.impl("affine_grid_backward", &attnbench_stn::affine_grid_backward_cpu);
}
