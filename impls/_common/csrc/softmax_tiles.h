// Memory-lean softmax attention: keys in tiles, online softmax, per-row
// log-sum-exp saved for backward, scores recomputed there (flash-attention
// style). No N×M matrix is ever stored: the largest temporaries are one
// [N, tile] score tile and the [N, Cv] accumulator, so extra memory grows
// linearly in N for a fixed tile. The matmuls are ATen's (at::mm, BLAS on CPU,
// cuBLAS on CUDA); the per-row softmax work is the `Rows` policy's kernels
// (CpuRows below, CudaRows in softmax_tiles_cuda.cuh), both built on
// softmax_math.h.
//
// Used by impls/non_local and impls/danet (found through impls/_common/csrc).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "softmax_math.h"

namespace attnbench_tiles {

inline at::ScalarType acc_type_of(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

inline int64_t tile_size(int64_t requested, int64_t M) {
  const int64_t t = requested > 0 ? requested : 256;
  return std::max<int64_t>(1, std::min(t, M));
}

// CPU rows: one at::parallel_for over query rows.
struct CpuRows {
  // s: [N, T] contiguous scaled scores -> exp(s - m'); m, l, alpha: [N].
  static void online(const at::Tensor& s, const at::Tensor& m, const at::Tensor& l, const at::Tensor& alpha) {
    const int64_t N = s.size(0), T = s.size(1);
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "softmax_tiles online (cpu)", [&] {
      scalar_t* sp = s.data_ptr<scalar_t>();
      scalar_t* mp = m.data_ptr<scalar_t>();
      scalar_t* lp = l.data_ptr<scalar_t>();
      scalar_t* ap = alpha.data_ptr<scalar_t>();
      at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(T, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          ap[i] = attnbench_math::online_softmax_tile<scalar_t>(sp + i * T, T, 1, mp[i], lp[i]);
        }
      });
    });
  }
  // s -> p = exp(s - lse), dp -> ds = scale·p·(dp - D); all rows.
  static void backward(const at::Tensor& s, const at::Tensor& dp, const at::Tensor& lse, const at::Tensor& D,
                       double scale) {
    const int64_t N = s.size(0), T = s.size(1);
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "softmax_tiles backward (cpu)", [&] {
      scalar_t* sp = s.data_ptr<scalar_t>();
      scalar_t* dpp = dp.data_ptr<scalar_t>();
      const scalar_t* lp = lse.data_ptr<scalar_t>();
      const scalar_t* Dp = D.data_ptr<scalar_t>();
      const scalar_t sc = static_cast<scalar_t>(scale);
      at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(T, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          attnbench_math::softmax_tile_backward<scalar_t>(sp + i * T, dpp + i * T, T, 1, lp[i], Dp[i], sc);
        }
      });
    });
  }
};

// q: [B, Ck, N], k: [B, Ck, M], v: [B, Cv, M] (contiguous, compute dtype).
// Returns out [B, Cv, N] and lse [B, N] (compute dtype).
template <class Rows>
std::tuple<at::Tensor, at::Tensor> softmax_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, double scale, int64_t block) {
  const int64_t B = q.size(0), N = q.size(2), M = k.size(2), Cv = v.size(1);
  auto out = at::empty({B, Cv, N}, q.options());
  auto lse = at::empty({B, N}, q.options());
  const int64_t T = tile_size(block, M);
  for (int64_t b = 0; b < B; ++b) {
    const auto qt = q[b].t();  // [N, Ck] view; BLAS takes the transpose
    auto m = at::full({N}, -std::numeric_limits<double>::infinity(), q.options());
    auto l = at::zeros({N}, q.options());
    auto alpha = at::empty({N}, q.options());
    auto acc = at::zeros({N, Cv}, q.options());
    for (int64_t j0 = 0; j0 < M; j0 += T) {
      const int64_t t = std::min(T, M - j0);
      auto s = at::mm(qt, k[b].narrow(1, j0, t));  // [N, t]
      if (scale != 1.0) s.mul_(scale);
      Rows::online(s, m, l, alpha);
      acc.mul_(alpha.unsqueeze(1));
      acc.addmm_(s, v[b].narrow(1, j0, t).t());  // += P [N, t] · V_tileᵀ [t, Cv]
    }
    out[b].copy_((acc / l.unsqueeze(1)).t());
    lse[b].copy_(m + l.log());
  }
  return {out, lse};
}

// Gradients of softmax_attention_forward w.r.t. q, k, v, with scores recomputed tile by tile.
template <class Rows>
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_attention_backward(const at::Tensor& gout, const at::Tensor& q,
                                                                          const at::Tensor& k, const at::Tensor& v,
                                                                          const at::Tensor& out, const at::Tensor& lse,
                                                                          double scale, int64_t block) {
  const int64_t B = q.size(0), N = q.size(2), M = k.size(2);
  auto dq = at::empty_like(q);
  auto dk = at::empty_like(k);
  auto dv = at::empty_like(v);
  const int64_t T = tile_size(block, M);
  for (int64_t b = 0; b < B; ++b) {
    const auto qt = q[b].t();                   // [N, Ck]
    const auto got = gout[b].t();               // [N, Cv]
    auto D = (gout[b] * out[b]).sum(0);         // [N]
    auto lse_b = lse[b].contiguous();
    auto dqt = at::zeros({q.size(2), q.size(1)}, q.options());  // [N, Ck]
    for (int64_t j0 = 0; j0 < M; j0 += T) {
      const int64_t t = std::min(T, M - j0);
      const auto k_tile = k[b].narrow(1, j0, t);  // [Ck, t]
      const auto v_tile = v[b].narrow(1, j0, t);  // [Cv, t]
      auto s = at::mm(qt, k_tile);                // [N, t]
      if (scale != 1.0) s.mul_(scale);
      auto dp = at::mm(got, v_tile);              // [N, t]
      Rows::backward(s, dp, lse_b, D, scale);     // s -> P, dp -> dS (scale folded in)
      dv[b].narrow(1, j0, t).copy_(at::mm(gout[b], s));  // [Cv, N]·[N, t]
      dqt.addmm_(dp, k_tile.t());                          // [N, t]·[t, Ck]
      dk[b].narrow(1, j0, t).copy_(at::mm(q[b], dp));      // [Ck, N]·[N, t]
    }
    dq[b].copy_(dqt.t());
  }
  (void)N;
  return {dq, dk, dv};
}

}  // namespace attnbench_tiles
