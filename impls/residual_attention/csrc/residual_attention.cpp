// Residual attention: op schemas and CPU kernels.
//
// mixed: one elementwise sweep. channel: per (b, block of positions) a sweep over
// the C planes for Σ m², then the output sweep (the block's C×kBlock values stay
// in L1/L2). spatial: per (b, c) plane, mean and biased variance, then the output
// sweep (the plane stays in cache). Backward recomputes f from m and the saved
// statistics (no f tensor is stored) with the same blocking.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "residual_attention.h"
#include "vec_math.h"

namespace attnbench_ran {
namespace {

constexpr int64_t kBlock = 256;  // positions per channel-kind task

const char* kind_name(int64_t kind) {
  return kind == kMixed ? "mixed" : kind == kChannel ? "channel" : kind == kSpatial ? "spatial" : "?";
}

void check_pair(const char* op, const at::Tensor& trunk, const at::Tensor& mask, int64_t kind) {
  TORCH_CHECK(kind == kMixed || kind == kChannel || kind == kSpatial, op,
              ": kind must be 0 (mixed), 1 (channel) or 2 (spatial), got ", kind);
  TORCH_CHECK(trunk.dim() == 4, op, ": trunk must have shape [B, C, H, W], got ", trunk.sizes());
  TORCH_CHECK(mask.sizes() == trunk.sizes(), op, ": mask_logits must have trunk's shape ", trunk.sizes(), ", got ",
              mask.sizes());
  TORCH_CHECK(trunk.is_floating_point(), op, ": trunk must be floating point, got ", trunk.scalar_type());
  TORCH_CHECK(mask.scalar_type() == trunk.scalar_type(), op, ": mask_logits must have trunk's dtype ",
              trunk.scalar_type(), ", got ", mask.scalar_type());
  TORCH_CHECK(mask.device() == trunk.device(), op, ": mask_logits must be on trunk's device ", trunk.device(),
              ", got ", mask.device());
}

at::ScalarType stats_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::vector<int64_t> stats_shape(const at::Tensor& trunk, int64_t kind) {
  if (kind == kChannel) return {trunk.size(0), trunk.size(2), trunk.size(3)};
  if (kind == kSpatial) return {trunk.size(0), trunk.size(1), 2};
  return {0};
}

// float32 sigmoid kinds, 8 lanes at a time with vec_math.h's exp (≤ 2 ulp). glibc's
// scalar expf does not vectorize in an `omp simd` loop without -ffast-math: the
// mixed and spatial kinds ran at 0.24-0.6x the vectorized impl (torch's vector
// sigmoid) on the full grid, 1 thread, interleaved (scripts/bench_pairs.py).
namespace vf {
namespace v = attnbench_vec;
using vec = v::vfloat;
constexpr int64_t kLanes = v::kFloatLanes;

inline vec one() { return v::splat(1.0f); }
inline vec sigmoid(vec x) { return one() / (one() + v::exp_v(-x)); }
// n < kLanes: the first n lanes, the others 0 (every formula below then gives 0 there)
inline vec ld(const float* p, int64_t n) { return n == kLanes ? v::load(p) : v::load_part(p, n, 0.0f); }
inline void st(float* p, vec x, int64_t n) {
  if (n == kLanes) {
    v::store(p, x);
  } else {
    v::store_part(p, x, n);
  }
}
// body(i, n) for i = i0, i0 + kLanes, ... with n = min(kLanes, i1 − i) lanes.
template <typename F>
inline void lanes(int64_t i0, int64_t i1, const F& body) {
  for (int64_t i = i0; i < i1; i += kLanes) body(i, std::min<int64_t>(kLanes, i1 - i));
}

void mixed_forward(const float* T, const float* M, float* O, int64_t i0, int64_t i1) {
  lanes(i0, i1, [&](int64_t i, int64_t n) { st(O + i, (one() + sigmoid(ld(M + i, n))) * ld(T + i, n), n); });
}

void mixed_backward(const float* G, const float* T, const float* M, float* DT, float* DM, int64_t i0, int64_t i1) {
  lanes(i0, i1, [&](int64_t i, int64_t n) {
    const vec g = ld(G + i, n), s = sigmoid(ld(M + i, n));
    st(DT + i, g * (one() + s), n);
    st(DM + i, g * ld(T + i, n) * s * (one() - s), n);
  });
}

// one (b, c) plane of the spatial kind: out = (1 + sigmoid((m − mean)·rstd))·t
void spatial_forward(const float* t, const float* m, float* o, int64_t HW, float mean, float rstd) {
  lanes(0, HW, [&](int64_t i, int64_t n) {
    const vec x = (ld(m + i, n) - v::splat(mean)) * v::splat(rstd);
    st(o + i, (one() + sigmoid(x)) * ld(t + i, n), n);
  });
}

// one plane of the spatial backward (spatial_h / spatial_grads of the header)
void spatial_backward(const float* g, const float* t, const float* m, float* dt, float* dm, int64_t HW, float mean,
                      float rstd) {
  const vec mu = v::splat(mean), r = v::splat(rstd);
  vec sum_h = v::splat(0.0f), sum_hx = v::splat(0.0f);
  lanes(0, HW, [&](int64_t i, int64_t n) {  // zero lanes past n: g = 0 gives h = 0
    const vec xhat = (ld(m + i, n) - mu) * r, s = sigmoid(xhat);
    const vec h = ld(g + i, n) * ld(t + i, n) * s * (one() - s);
    sum_h += h;
    sum_hx += h * xhat;
  });
  const vec mean_h = v::splat(v::hsum(sum_h) / float(HW)), mean_hx = v::splat(v::hsum(sum_hx) / float(HW));
  lanes(0, HW, [&](int64_t i, int64_t n) {
    const vec gi = ld(g + i, n), xhat = (ld(m + i, n) - mu) * r, s = sigmoid(xhat);
    const vec h = gi * ld(t + i, n) * s * (one() - s);
    st(dt + i, gi * (one() + s), n);
    st(dm + i, r * (h - mean_h - xhat * mean_hx), n);
  });
}
}  // namespace vf

template <typename scalar_t>
void forward_kernel(const scalar_t* T, const scalar_t* M, scalar_t* O, acc_type_t<scalar_t>* S, int64_t B, int64_t C,
                    int64_t HW, int64_t kind) {
  using acc_t = acc_type_t<scalar_t>;
  if (kind == kMixed) {
    at::parallel_for(0, B * C * HW, 32768, [&](int64_t i0, int64_t i1) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        vf::mixed_forward(T, M, O, i0, i1);
      } else {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) O[i] = scalar_t(mixed_out(acc_t(T[i]), acc_t(M[i])));
      }
    });
  } else if (kind == kChannel) {
    const int64_t blocks = (HW + kBlock - 1) / kBlock;
    at::parallel_for(0, B * blocks, std::max<int64_t>(1, 16384 / (C * kBlock)), [&](int64_t k0, int64_t k1) {
      acc_t norm[kBlock];
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t b = k / blocks, i0 = (k % blocks) * kBlock, n = std::min(kBlock, HW - i0);
        std::fill(norm, norm + n, acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* m = M + (b * C + c) * HW + i0;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) norm[j] += acc_t(m[j]) * acc_t(m[j]);
        }
        for (int64_t j = 0; j < n; ++j) norm[j] = clamped_norm(norm[j]);
        for (int64_t c = 0; c < C; ++c) {
          const int64_t off = (b * C + c) * HW + i0;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) O[off + j] = scalar_t(channel_out(acc_t(T[off + j]), acc_t(M[off + j]), norm[j]));
        }
        std::copy(norm, norm + n, S + b * HW + i0);
      }
    });
  } else {
    at::parallel_for(0, B * C, std::max<int64_t>(1, 16384 / HW), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const scalar_t* m = M + p * HW;
        const scalar_t* t = T + p * HW;
        scalar_t* o = O + p * HW;
        acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < HW; ++i) sum += acc_t(m[i]);
        const acc_t mean = sum / acc_t(HW);
        acc_t sq = 0;
#pragma omp simd reduction(+ : sq)
        for (int64_t i = 0; i < HW; ++i) sq += (acc_t(m[i]) - mean) * (acc_t(m[i]) - mean);
        const acc_t rstd = inv_std(sq / acc_t(HW));
        if constexpr (std::is_same_v<scalar_t, float>) {
          vf::spatial_forward(t, m, o, HW, mean, rstd);
        } else {
#pragma omp simd
          for (int64_t i = 0; i < HW; ++i) o[i] = scalar_t(spatial_out(acc_t(t[i]), acc_t(m[i]), mean, rstd));
        }
        S[2 * p] = mean;
        S[2 * p + 1] = rstd;
      }
    });
  }
}

template <typename scalar_t>
void backward_kernel(const scalar_t* G, const scalar_t* T, const scalar_t* M, const acc_type_t<scalar_t>* S,
                     scalar_t* DT, scalar_t* DM, int64_t B, int64_t C, int64_t HW, int64_t kind) {
  using acc_t = acc_type_t<scalar_t>;
  if (kind == kMixed) {
    at::parallel_for(0, B * C * HW, 32768, [&](int64_t i0, int64_t i1) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        vf::mixed_backward(G, T, M, DT, DM, i0, i1);
        return;
      }
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        acc_t dt, dm;
        mixed_grads(acc_t(G[i]), acc_t(T[i]), acc_t(M[i]), dt, dm);
        DT[i] = scalar_t(dt);
        DM[i] = scalar_t(dm);
      }
    });
  } else if (kind == kChannel) {
    const int64_t blocks = (HW + kBlock - 1) / kBlock;
    at::parallel_for(0, B * blocks, std::max<int64_t>(1, 16384 / (C * kBlock)), [&](int64_t k0, int64_t k1) {
      acc_t dot[kBlock];
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t b = k / blocks, i0 = (k % blocks) * kBlock, n = std::min(kBlock, HW - i0);
        const acc_t* norm = S + b * HW + i0;
        std::fill(dot, dot + n, acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const int64_t off = (b * C + c) * HW + i0;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j)
            dot[j] += channel_dot_term(acc_t(G[off + j]), acc_t(T[off + j]), acc_t(M[off + j]), norm[j]);
        }
        for (int64_t c = 0; c < C; ++c) {
          const int64_t off = (b * C + c) * HW + i0;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            acc_t dt, dm;
            channel_grads(acc_t(G[off + j]), acc_t(T[off + j]), acc_t(M[off + j]), norm[j], dot[j], dt, dm);
            DT[off + j] = scalar_t(dt);
            DM[off + j] = scalar_t(dm);
          }
        }
      }
    });
  } else {
    at::parallel_for(0, B * C, std::max<int64_t>(1, 8192 / HW), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t off = p * HW;
        const acc_t mean = S[2 * p], rstd = S[2 * p + 1];
        if constexpr (std::is_same_v<scalar_t, float>) {
          vf::spatial_backward(G + off, T + off, M + off, DT + off, DM + off, HW, mean, rstd);
          continue;
        }
        acc_t sum_h = 0, sum_hx = 0;
#pragma omp simd reduction(+ : sum_h, sum_hx)
        for (int64_t i = 0; i < HW; ++i) {
          acc_t h, xhat;
          spatial_h(acc_t(G[off + i]), acc_t(T[off + i]), acc_t(M[off + i]), mean, rstd, h, xhat);
          sum_h += h;
          sum_hx += h * xhat;
        }
        const acc_t mean_h = sum_h / acc_t(HW), mean_hx = sum_hx / acc_t(HW);
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) {
          acc_t dt, dm;
          spatial_grads(acc_t(G[off + i]), acc_t(T[off + i]), acc_t(M[off + i]), mean, rstd, mean_h, mean_hx, dt,
                        dm);
          DT[off + i] = scalar_t(dt);
          DM[off + i] = scalar_t(dm);
        }
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> ran_forward_cpu(const at::Tensor& trunk_, const at::Tensor& mask_, int64_t kind) {
  check_pair("ran_forward", trunk_, mask_, kind);
  TORCH_CHECK(trunk_.device().is_cpu(), "ran_forward: CPU kernel got trunk on ", trunk_.device());
  const at::Tensor trunk = trunk_.contiguous(), mask = mask_.contiguous();
  const int64_t B = trunk.size(0), C = trunk.size(1), HW = trunk.size(2) * trunk.size(3);
  at::Tensor out = at::empty_like(trunk, at::MemoryFormat::Contiguous);
  at::Tensor stats = at::empty(stats_shape(trunk, kind), trunk.options().dtype(stats_type(trunk.scalar_type())));
  if (out.numel() == 0) return {out, stats};
  AT_DISPATCH_FLOATING_TYPES(trunk.scalar_type(), "ran_forward", [&] {
    forward_kernel<scalar_t>(trunk.data_ptr<scalar_t>(), mask.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                             stats.data_ptr<acc_type_t<scalar_t>>(), B, C, HW, kind);
  });
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor> ran_backward_cpu(const at::Tensor& grad_out_, const at::Tensor& trunk_,
                                                    const at::Tensor& mask_, const at::Tensor& stats_, int64_t kind) {
  check_pair("ran_backward", trunk_, mask_, kind);
  TORCH_CHECK(trunk_.device().is_cpu(), "ran_backward: CPU kernel got trunk on ", trunk_.device());
  TORCH_CHECK(grad_out_.sizes() == trunk_.sizes() && grad_out_.scalar_type() == trunk_.scalar_type(),
              "ran_backward: grad_out must be ", trunk_.scalar_type(), " of shape ", trunk_.sizes(), ", got ",
              grad_out_.scalar_type(), " ", grad_out_.sizes());
  const auto shape = stats_shape(trunk_, kind);
  TORCH_CHECK(stats_.sizes() == at::IntArrayRef(shape) && stats_.scalar_type() == stats_type(trunk_.scalar_type()),
              "ran_backward: stats for kind ", kind_name(kind), " must be ", stats_type(trunk_.scalar_type()),
              " of shape ", at::IntArrayRef(shape), ", got ", stats_.scalar_type(), " ", stats_.sizes());
  const at::Tensor g = grad_out_.contiguous(), trunk = trunk_.contiguous(), mask = mask_.contiguous();
  const at::Tensor stats = stats_.contiguous();
  const int64_t B = trunk.size(0), C = trunk.size(1), HW = trunk.size(2) * trunk.size(3);
  at::Tensor dt = at::empty_like(trunk, at::MemoryFormat::Contiguous);
  at::Tensor dm = at::empty_like(trunk, at::MemoryFormat::Contiguous);
  if (dt.numel() == 0) return {dt, dm};
  AT_DISPATCH_FLOATING_TYPES(trunk.scalar_type(), "ran_backward", [&] {
    backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), trunk.data_ptr<scalar_t>(), mask.data_ptr<scalar_t>(),
                              stats.data_ptr<acc_type_t<scalar_t>>(), dt.data_ptr<scalar_t>(), dm.data_ptr<scalar_t>(),
                              B, C, HW, kind);
  });
  return {dt, dm};
}

}  // namespace

TORCH_LIBRARY(attnbench_residual_attention, m) {
  m.def("ran_forward(Tensor trunk, Tensor mask_logits, int kind) -> (Tensor out, Tensor stats)");
  m.def(
      "ran_backward(Tensor grad_out, Tensor trunk, Tensor mask_logits, Tensor stats, int kind) -> (Tensor "
      "grad_trunk, Tensor grad_mask_logits)");
}

TORCH_LIBRARY_IMPL(attnbench_residual_attention, CPU, m) {
  m.impl("ran_forward", &ran_forward_cpu);
  m.impl("ran_backward", &ran_backward_cpu);
}

}  // namespace attnbench_ran
