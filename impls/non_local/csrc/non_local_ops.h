// Device-generic drivers of the non-local ops (ATen matmuls + the Rows
// policies' per-row kernels). Included by non_local.cpp (CpuRows) and
// non_local_cuda.cu (CudaRows).
//
//   softmax modes: softmax_tiles.h (online softmax over key tiles, lse saved).
//   dot:           associative, y = θ (φᵀ g) / M: B·(N+M)·Ck·Cv MACs, no N×M matrix.
//   concat:        key tiles of f = ReLU(a_i + b_j)/M, recomputed in backward.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

#include "non_local.h"
#include "softmax_tiles.h"

namespace attnbench_nl {

inline bool is_softmax(const std::string& mode) { return mode == "embedded_gaussian" || mode == "gaussian"; }

inline void check_inputs(const char* op, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
                         const c10::optional<at::Tensor>& w, const std::string& mode) {
  TORCH_CHECK(mode == "embedded_gaussian" || mode == "gaussian" || mode == "dot" || mode == "concat", op,
              ": mode must be embedded_gaussian, gaussian, dot or concat, got '", mode, "'");
  TORCH_CHECK(theta.dim() == 4, op, ": theta must have shape [B, Ck, H, W], got ", theta.sizes());
  TORCH_CHECK(phi.dim() == 4 && phi.size(0) == theta.size(0) && phi.size(1) == theta.size(1), op,
              ": phi must have shape [B, Ck, Hk, Wk] = [", theta.size(0), ", ", theta.size(1), ", Hk, Wk], got ",
              phi.sizes());
  TORCH_CHECK(g.dim() == 4 && g.size(0) == theta.size(0) && g.size(2) == phi.size(2) && g.size(3) == phi.size(3), op,
              ": g must have shape [B, Cv, Hk, Wk] = [", theta.size(0), ", Cv, ", phi.size(2), ", ", phi.size(3),
              "], got ", g.sizes());
  TORCH_CHECK(phi.size(2) * phi.size(3) > 0, op, ": phi must have at least one key position, got ", phi.sizes());
  for (const auto* t : {&phi, &g}) {
    TORCH_CHECK(t->scalar_type() == theta.scalar_type(), op, ": theta, phi and g must share a dtype, got ",
                theta.scalar_type(), " and ", t->scalar_type());
    TORCH_CHECK(t->device() == theta.device(), op, ": theta, phi and g must be on one device, got ", theta.device(),
                " and ", t->device());
  }
  if (mode == "concat") {
    TORCH_CHECK(w.has_value(), op, ": w ([2*Ck]) is required for mode 'concat'");
    TORCH_CHECK(w->dim() == 1 && w->size(0) == 2 * theta.size(1), op, ": w must have shape [2*Ck] = [",
                2 * theta.size(1), "], got ", w->sizes());
    TORCH_CHECK(w->scalar_type() == theta.scalar_type() && w->device() == theta.device(), op,
                ": w must match theta's dtype and device, got ", w->scalar_type(), " on ", w->device());
  } else {
    TORCH_CHECK(!w.has_value(), op, ": w is only accepted for mode 'concat', not '", mode, "'");
  }
}

// Flattened, contiguous, in the compute dtype (float for half types).
inline at::Tensor flat(const at::Tensor& t) {
  return t.reshape({t.size(0), t.size(1), -1}).to(attnbench_tiles::acc_type_of(t.scalar_type())).contiguous();
}

template <class ConcatRows>
at::Tensor concat_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                          int64_t block) {
#if !defined(__CUDACC__)
  if constexpr (ConcatRows::kSweep) return ConcatRows::sweep_forward(q, k, v, w);  // CPU: non_local.cpp
#endif
  const int64_t B = q.size(0), Ck = q.size(1), N = q.size(2), M = k.size(2), Cv = v.size(1);
  const auto a = at::matmul(w.narrow(0, 0, Ck), q).contiguous();   // [B, N]
  const auto bk = at::matmul(w.narrow(0, Ck, Ck), k).contiguous();  // [B, M]
  const double inv_m = 1.0 / static_cast<double>(M);
  auto out = at::empty({B, Cv, N}, q.options());
  const int64_t T = attnbench_tiles::tile_size(block, M);
  for (int64_t b = 0; b < B; ++b) {
    auto acc = at::zeros({Cv, N}, q.options());
    for (int64_t j0 = 0; j0 < M; j0 += T) {
      const int64_t t = std::min(T, M - j0);
      auto f = ConcatRows::forward(a[b], bk[b].narrow(0, j0, t).contiguous(), inv_m);  // [N, t]
      acc.addmm_(v[b].narrow(1, j0, t), f.t());
    }
    out[b].copy_(acc);
  }
  return out;
}

template <class ConcatRows>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> concat_backward(const at::Tensor& gout, const at::Tensor& q,
                                                                           const at::Tensor& k, const at::Tensor& v,
                                                                           const at::Tensor& w, int64_t block) {
#if !defined(__CUDACC__)
  if constexpr (ConcatRows::kSweep) return ConcatRows::sweep_backward(gout, q, k, v, w);  // CPU: non_local.cpp
#endif
  const int64_t B = q.size(0), Ck = q.size(1), N = q.size(2), M = k.size(2);
  const auto w1 = w.narrow(0, 0, Ck), w2 = w.narrow(0, Ck, Ck);
  const auto a = at::matmul(w1, q).contiguous();   // [B, N]
  const auto bk = at::matmul(w2, k).contiguous();  // [B, M]
  const double inv_m = 1.0 / static_cast<double>(M);
  auto da = at::zeros({B, N}, q.options());
  auto db = at::empty({B, M}, q.options());
  auto dv = at::empty_like(v);
  const int64_t T = attnbench_tiles::tile_size(block, M);
  for (int64_t b = 0; b < B; ++b) {
    const auto got = gout[b].t();  // [N, Cv]
    for (int64_t j0 = 0; j0 < M; j0 += T) {
      const int64_t t = std::min(T, M - j0);
      const auto b_tile = bk[b].narrow(0, j0, t).contiguous();
      const auto v_tile = v[b].narrow(1, j0, t);
      auto f = ConcatRows::forward(a[b], b_tile, inv_m);  // [N, t]
      dv[b].narrow(1, j0, t).copy_(at::mm(gout[b], f));   // [Cv, N]·[N, t]
      auto df = at::mm(got, v_tile);                      // [N, t] upstream of f
      ConcatRows::backward(a[b], b_tile, df, inv_m);      // -> d(pre-activation)
      da[b].add_(df.sum(1));
      db[b].narrow(0, j0, t).copy_(df.sum(0));
    }
  }
  auto dq = (w1.view({1, Ck, 1}) * da.unsqueeze(1)).contiguous();
  auto dk = (w2.view({1, Ck, 1}) * db.unsqueeze(1)).contiguous();
  auto dw = at::cat({(q * da.unsqueeze(1)).sum({0, 2}), (k * db.unsqueeze(1)).sum({0, 2})});
  return {dq, dk, dv, dw};
}

// nl_forward: (out [B, Cv, H, W] in the input dtype, stats [B, N]: per-row lse for
// the softmax modes, zeros otherwise; float for half inputs; scores [B, N, M]: the
// scaled scores when `save_scores` (softmax modes only), else an empty [0] tensor).
template <class Rows, class ConcatRows>
std::tuple<at::Tensor, at::Tensor, at::Tensor> nl_forward(const at::Tensor& theta, const at::Tensor& phi,
                                                          const at::Tensor& g, const c10::optional<at::Tensor>& w,
                                                          const std::string& mode, double scale, int64_t key_block,
                                                          bool save_scores) {
  check_inputs("nl_forward", theta, phi, g, w, mode);
  TORCH_CHECK(!save_scores || is_softmax(mode), "nl_forward: save_scores is for the softmax modes, not '", mode, "'");
  const int64_t B = theta.size(0), H = theta.size(2), W = theta.size(3), Cv = g.size(1);
  const auto q = flat(theta), k = flat(phi), v = flat(g);
  at::Tensor out, stats, scores;
  if (is_softmax(mode)) {
    std::tie(out, stats) = attnbench_tiles::softmax_attention_forward<Rows>(q, k, v, scale, key_block,
                                                                             save_scores ? &scores : nullptr);
  } else {
    TORCH_CHECK(scale == 1.0, "nl_forward: scale is accepted only for the softmax modes, got ", scale);
    if (mode == "dot") {
      const auto kv = at::bmm(k, v.transpose(1, 2));                       // [B, Ck, Cv]
      out = at::bmm(kv.transpose(1, 2), q).div_(static_cast<double>(k.size(2)));  // [B, Cv, N]
    } else {
      out = concat_forward<ConcatRows>(q, k, v, w->to(q.scalar_type()).contiguous(), key_block);
    }
    stats = at::zeros({B, H * W}, q.options());
  }
  if (!scores.defined()) scores = at::empty({0}, q.options());
  return {out.view({B, Cv, H, W}).to(theta.scalar_type()), stats, scores};
}

template <class Rows, class ConcatRows>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nl_backward(
    const at::Tensor& grad_out, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
    const c10::optional<at::Tensor>& w, const at::Tensor& out, const at::Tensor& stats, const std::string& mode,
    double scale, int64_t key_block, const c10::optional<at::Tensor>& scores) {
  check_inputs("nl_backward", theta, phi, g, w, mode);
  const bool saved = scores.has_value() && scores->numel() > 0;
  if (saved) {
    const int64_t N = theta.size(2) * theta.size(3), M = phi.size(2) * phi.size(3);
    TORCH_CHECK(is_softmax(mode), "nl_backward: scores are only kept by the softmax modes, not '", mode, "'");
    TORCH_CHECK(scores->dim() == 3 && scores->size(0) == theta.size(0) && scores->size(1) == N &&
                    scores->size(2) == M,
                "nl_backward: scores must have shape [B, H*W, Hk*Wk] = [", theta.size(0), ", ", N, ", ", M, "], got ",
                scores->sizes());
  }
  TORCH_CHECK(grad_out.sizes() == out.sizes(), "nl_backward: grad_out must have the output's shape ", out.sizes(),
              ", got ", grad_out.sizes());
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == theta.size(0) && stats.size(1) == theta.size(2) * theta.size(3),
              "nl_backward: stats must have shape [B, H*W], got ", stats.sizes());
  const auto q = flat(theta), k = flat(phi), v = flat(g), gout = flat(grad_out);
  at::Tensor dq, dk, dv, dw;
  if (is_softmax(mode)) {
    const auto o = flat(out);
    const auto lse = stats.to(q.scalar_type()).contiguous();
    const at::Tensor s = saved ? scores->to(q.scalar_type()).contiguous() : at::Tensor();
    std::tie(dq, dk, dv) =
        attnbench_tiles::softmax_attention_backward<Rows>(gout, q, k, v, o, lse, scale, key_block, saved ? &s : nullptr);
  } else if (mode == "dot") {
    const double inv_m = 1.0 / static_cast<double>(k.size(2));
    const auto kv = at::bmm(k, v.transpose(1, 2));                 // [B, Ck, Cv]
    dq = at::bmm(kv, gout).mul_(inv_m);                            // [B, Ck, N]
    const auto dkv = at::bmm(q, gout.transpose(1, 2)).mul_(inv_m);  // [B, Ck, Cv]
    dk = at::bmm(dkv, v);                                          // [B, Ck, M]
    dv = at::bmm(dkv.transpose(1, 2), k);                          // [B, Cv, M]
  } else {
    std::tie(dq, dk, dv, dw) =
        concat_backward<ConcatRows>(gout, q, k, v, w->to(q.scalar_type()).contiguous(), key_block);
  }
  auto dtheta = dq.view(theta.sizes()).to(theta.scalar_type());
  auto dphi = dk.view(phi.sizes()).to(phi.scalar_type());
  auto dg = dv.view(g.sizes()).to(g.scalar_type());
  auto dw_out = w.has_value() ? dw.to(w->scalar_type()) : at::zeros({0}, theta.options());
  return {dtheta, dphi, dg, dw_out};
}

}  // namespace attnbench_nl
