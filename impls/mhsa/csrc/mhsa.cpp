// Fused multi-head attention, CPU kernels and the op schema (namespace attnbench_mhsa).
//
//   flash_forward(q [B,h,L,d], k [B,h,S,d], v [B,h,S,dv], mask bool [B,S]?, causal, scale)
//       -> (out [B,h,L,dv], lse [B,h,L])
//   flash_backward(gout, q, k, v, mask, out, lse, causal, scale) -> (dq, dk, dv)
//
// Forward: one task per (b, h, tile of kQueryTile query rows); keys in tiles of
// kKeyTile; online softmax; only the per-row log-sum-exp is saved. Backward: one
// task per (b, h); scores are recomputed tile by tile from lse. Neither pass
// allocates anything of size L×S.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "mhsa.h"

namespace attnbench_mhsa {
namespace {

constexpr int64_t kQueryTile = 32;
constexpr int64_t kKeyTile = 64;

struct Dims {
  int64_t B, H, L, S, D, DV;
};

Dims check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(q.dim() == 4, op, ": q must have shape [B, h, L, d], got ", q.sizes());
  TORCH_CHECK(k.dim() == 4, op, ": k must have shape [B, h, S, d], got ", k.sizes());
  TORCH_CHECK(v.dim() == 4, op, ": v must have shape [B, h, S, dv], got ", v.sizes());
  const Dims dims{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  TORCH_CHECK(k.size(0) == dims.B && k.size(1) == dims.H && k.size(3) == dims.D, op,
              ": k must have shape [B, h, S, d] = [", dims.B, ", ", dims.H, ", S, ", dims.D, "], got ", k.sizes());
  TORCH_CHECK(v.size(0) == dims.B && v.size(1) == dims.H && v.size(2) == dims.S, op,
              ": v must have shape [B, h, S, dv] = [", dims.B, ", ", dims.H, ", ", dims.S, ", dv], got ", v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op, ": q, k, v must be on one device, got ",
              q.device(), ", ", k.device(), ", ", v.device());
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": mask must be bool (True = ignore the key), got ",
                mask->scalar_type());
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == dims.B && mask->size(1) == dims.S, op,
                ": mask must have shape [B, S] = [", dims.B, ", ", dims.S, "], got ", mask->sizes());
    TORCH_CHECK(mask->device() == q.device(), op, ": mask must be on ", q.device(), ", got ", mask->device());
  }
  return dims;
}

// Inner products of one row x[0:n] with the columns of a transposed tile
// cols [n, kKeyTile]: s[jj] = Σ_t x[t]·cols[t·kKeyTile + jj], jj < nk. Four
// 256-bit accumulators (GCC/Clang vector extensions) stay in registers across
// the reduction over t; the auto-vectorized form re-loads and stores the score
// row for every FMA and runs several times slower.
template <typename acc_t>
inline void dot_columns(const acc_t* x, const acc_t* cols, int64_t n, int64_t nk, acc_t* s) {
  typedef acc_t vec __attribute__((vector_size(32)));
  constexpr int64_t W = 32 / sizeof(acc_t);
  int64_t j0 = 0;
  for (; j0 + 4 * W <= nk; j0 += 4 * W) {
    vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t t = 0; t < n; ++t) {
      const acc_t xv = x[t];
      const acc_t* c = cols + t * kKeyTile + j0;
      vec c0, c1, c2, c3;
      std::memcpy(&c0, c, sizeof(vec));
      std::memcpy(&c1, c + W, sizeof(vec));
      std::memcpy(&c2, c + 2 * W, sizeof(vec));
      std::memcpy(&c3, c + 3 * W, sizeof(vec));
      a0 += xv * c0;
      a1 += xv * c1;
      a2 += xv * c2;
      a3 += xv * c3;
    }
    std::memcpy(s + j0, &a0, sizeof(vec));
    std::memcpy(s + j0 + W, &a1, sizeof(vec));
    std::memcpy(s + j0 + 2 * W, &a2, sizeof(vec));
    std::memcpy(s + j0 + 3 * W, &a3, sizeof(vec));
  }
  if (j0 < nk) {
    std::fill(s + j0, s + nk, acc_t(0));
    for (int64_t t = 0; t < n; ++t) {
      const acc_t xv = x[t];
      const acc_t* c = cols + t * kKeyTile;
      for (int64_t jj = j0; jj < nk; ++jj) s[jj] += xv * c[jj];
    }
  }
}

template <typename scalar_t>
void forward_kernel(const scalar_t* q, const scalar_t* k, const scalar_t* v, const bool* mask, scalar_t* out,
                    scalar_t* lse, const Dims& n, bool causal, scalar_t scale) {
  using acc_t = scalar_t;  // float or double on the CPU
  const int64_t q_tiles = (n.L + kQueryTile - 1) / kQueryTile;
  at::parallel_for(0, n.B * n.H * q_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q_tile(kQueryTile * n.D), k_t(n.D * kKeyTile), scores(kQueryTile * kKeyTile);
    std::vector<acc_t> acc(kQueryTile * n.DV), m(kQueryTile), l(kQueryTile);
    std::vector<char> padded(kKeyTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_tiles, i0 = (task % q_tiles) * kQueryTile, b = bh / n.H;
      const int64_t nq = std::min(kQueryTile, n.L - i0);
      const scalar_t* qb = q + (bh * n.L + i0) * n.D;
      const scalar_t* kb = k + bh * n.S * n.D;
      const scalar_t* vb = v + bh * n.S * n.DV;
      for (int64_t x = 0; x < nq * n.D; ++x) q_tile[x] = scale * qb[x];  // fold the scale into q
      std::fill(acc.begin(), acc.end(), acc_t(0));
      std::fill(m.begin(), m.end(), neg_inf<acc_t>());
      std::fill(l.begin(), l.end(), acc_t(0));
      const int64_t keys = key_end(i0 + nq, n.S, causal);
      for (int64_t j0 = 0; j0 < keys; j0 += kKeyTile) {
        const int64_t nk = std::min(kKeyTile, keys - j0);
        for (int64_t jj = 0; jj < nk; ++jj) {
          padded[jj] = mask != nullptr && mask[b * n.S + j0 + jj];
          for (int64_t t = 0; t < n.D; ++t) k_t[t * kKeyTile + jj] = kb[(j0 + jj) * n.D + t];
        }
        for (int64_t ii = 0; ii < nq; ++ii) {
          const int64_t i = i0 + ii;
          acc_t* s = scores.data() + ii * kKeyTile;
          dot_columns(q_tile.data() + ii * n.D, k_t.data(), n.D, nk, s);
          acc_t block_max = neg_inf<acc_t>();
          for (int64_t jj = 0; jj < nk; ++jj) {
            s[jj] = allowed(i, j0 + jj, padded[jj], causal) ? s[jj] : neg_inf<acc_t>();
            block_max = std::max(block_max, s[jj]);
          }
          if (block_max == neg_inf<acc_t>()) continue;  // nothing allowed in this tile
          const acc_t factor = online_rescale(m[ii], l[ii], block_max);
          acc_t* a = acc.data() + ii * n.DV;
          if (factor != acc_t(1)) {
            for (int64_t c = 0; c < n.DV; ++c) a[c] *= factor;
          }
          const acc_t mi = m[ii];
          acc_t sum = 0;
          for (int64_t jj = 0; jj < nk; ++jj) {
            const acc_t p = s[jj] == neg_inf<acc_t>() ? acc_t(0) : exp_acc<acc_t>(s[jj] - mi);
            s[jj] = p;
            sum += p;
          }
          l[ii] += sum;
          for (int64_t jj = 0; jj < nk; ++jj) {
            const acc_t p = s[jj];
            if (p == acc_t(0)) continue;
            const scalar_t* vj = vb + (j0 + jj) * n.DV;
            for (int64_t c = 0; c < n.DV; ++c) a[c] += p * vj[c];
          }
        }
      }
      for (int64_t ii = 0; ii < nq; ++ii) {
        const acc_t inv = inv_sum(l[ii]);
        scalar_t* o = out + (bh * n.L + i0 + ii) * n.DV;
        const acc_t* a = acc.data() + ii * n.DV;
        for (int64_t c = 0; c < n.DV; ++c) o[c] = static_cast<scalar_t>(a[c] * inv);
        lse[bh * n.L + i0 + ii] = static_cast<scalar_t>(log_sum_exp(m[ii], l[ii]));
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* gout, const scalar_t* q, const scalar_t* k, const scalar_t* v, const bool* mask,
                     const scalar_t* out, const scalar_t* lse, scalar_t* dq, scalar_t* dk, scalar_t* dv, const Dims& n,
                     bool causal, scalar_t scale) {
  using acc_t = scalar_t;
  at::parallel_for(0, n.B * n.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> D(n.L), dq_acc(n.L * n.D), k_t(n.D * kKeyTile), v_t(n.DV * kKeyTile);
    std::vector<acc_t> dk_acc(kKeyTile * n.D), dv_acc(kKeyTile * n.DV), p(kKeyTile), ds(kKeyTile);
    std::vector<char> padded(kKeyTile);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / n.H;
      const scalar_t* qb = q + bh * n.L * n.D;
      const scalar_t* kb = k + bh * n.S * n.D;
      const scalar_t* vb = v + bh * n.S * n.DV;
      const scalar_t* gb = gout + bh * n.L * n.DV;
      const scalar_t* ob = out + bh * n.L * n.DV;
      const scalar_t* lb = lse + bh * n.L;
      for (int64_t i = 0; i < n.L; ++i) {
        acc_t sum = 0;
        for (int64_t c = 0; c < n.DV; ++c) sum += acc_t(gb[i * n.DV + c]) * acc_t(ob[i * n.DV + c]);
        D[i] = sum;
      }
      std::fill(dq_acc.begin(), dq_acc.end(), acc_t(0));
      for (int64_t j0 = 0; j0 < n.S; j0 += kKeyTile) {
        const int64_t nk = std::min(kKeyTile, n.S - j0);
        for (int64_t jj = 0; jj < nk; ++jj) {
          padded[jj] = mask != nullptr && mask[b * n.S + j0 + jj];
          for (int64_t t = 0; t < n.D; ++t) k_t[t * kKeyTile + jj] = kb[(j0 + jj) * n.D + t];
          for (int64_t c = 0; c < n.DV; ++c) v_t[c * kKeyTile + jj] = vb[(j0 + jj) * n.DV + c];
        }
        std::fill(dk_acc.begin(), dk_acc.end(), acc_t(0));
        std::fill(dv_acc.begin(), dv_acc.end(), acc_t(0));
        for (int64_t i = first_query(j0, causal); i < n.L; ++i) {
          const acc_t lse_i = lb[i];
          if (lse_i == neg_inf<acc_t>()) continue;  // fully masked row: contributes 0 everywhere
          const scalar_t* qi = qb + i * n.D;
          const scalar_t* gi = gb + i * n.DV;
          dot_columns(qi, k_t.data(), n.D, nk, p.data());   // p <- q_i · k_j (unscaled)
          dot_columns(gi, v_t.data(), n.DV, nk, ds.data());  // ds <- dp = gout_i · v_j
          bool any = false;
          for (int64_t jj = 0; jj < nk; ++jj) {
            const bool ok = allowed(i, j0 + jj, padded[jj], causal);
            const acc_t pj = ok ? exp_acc<acc_t>(scale * p[jj] - lse_i) : acc_t(0);
            p[jj] = pj;
            ds[jj] = scale * dscore(pj, ds[jj], D[i]);
            any |= ok;
          }
          if (!any) continue;
          acc_t* dqi = dq_acc.data() + i * n.D;
          for (int64_t jj = 0; jj < nk; ++jj) {
            const acc_t pj = p[jj], dsj = ds[jj];
            if (pj == acc_t(0)) continue;
            acc_t* dvj = dv_acc.data() + jj * n.DV;
            for (int64_t c = 0; c < n.DV; ++c) dvj[c] += pj * acc_t(gi[c]);
            acc_t* dkj = dk_acc.data() + jj * n.D;
            const scalar_t* kj = kb + (j0 + jj) * n.D;
            for (int64_t t = 0; t < n.D; ++t) {
              dkj[t] += dsj * acc_t(qi[t]);
              dqi[t] += dsj * acc_t(kj[t]);
            }
          }
        }
        for (int64_t jj = 0; jj < nk; ++jj) {
          for (int64_t t = 0; t < n.D; ++t) dk[(bh * n.S + j0 + jj) * n.D + t] = dk_acc[jj * n.D + t];
          for (int64_t c = 0; c < n.DV; ++c) dv[(bh * n.S + j0 + jj) * n.DV + c] = dv_acc[jj * n.DV + c];
        }
      }
      for (int64_t x = 0; x < n.L * n.D; ++x) dq[bh * n.L * n.D + x] = dq_acc[x];
    }
  });
}

std::tuple<at::Tensor, at::Tensor> flash_forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in, const std::optional<at::Tensor>& mask_in,
                                                     bool causal, double scale) {
  const Dims n = check_inputs("flash_forward", q_in, k_in, v_in, mask_in);
  TORCH_CHECK(q_in.device().is_cpu(), "flash_forward: the CPU kernel got tensors on ", q_in.device());
  TORCH_CHECK(q_in.scalar_type() == at::kFloat || q_in.scalar_type() == at::kDouble,
              "flash_forward: on the CPU q, k, v must be float32 or float64, got ", q_in.scalar_type());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  std::optional<at::Tensor> mask;
  if (mask_in.has_value()) mask = mask_in->contiguous();
  at::Tensor out = at::empty({n.B, n.H, n.L, n.DV}, q.options());
  at::Tensor lse = at::empty({n.B, n.H, n.L}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "flash_forward", [&] {
    forward_kernel<scalar_t>(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                             mask ? mask->const_data_ptr<bool>() : nullptr, out.mutable_data_ptr<scalar_t>(),
                             lse.mutable_data_ptr<scalar_t>(), n, causal, static_cast<scalar_t>(scale));
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_backward_cpu(
    const at::Tensor& gout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& mask_in, const at::Tensor& out_in, const at::Tensor& lse_in, bool causal,
    double scale) {
  const Dims n = check_inputs("flash_backward", q_in, k_in, v_in, mask_in);
  TORCH_CHECK(q_in.device().is_cpu(), "flash_backward: the CPU kernel got tensors on ", q_in.device());
  TORCH_CHECK(q_in.scalar_type() == at::kFloat || q_in.scalar_type() == at::kDouble,
              "flash_backward: on the CPU q, k, v must be float32 or float64, got ", q_in.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"gout", &gout_in}, {"out", &out_in}}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == n.B && t->size(1) == n.H && t->size(2) == n.L && t->size(3) == n.DV,
                "flash_backward: ", name, " must have shape [B, h, L, dv] = [", n.B, ", ", n.H, ", ", n.L, ", ", n.DV,
                "], got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == q_in.scalar_type(), "flash_backward: ", name, " must be ", q_in.scalar_type(),
                ", got ", t->scalar_type());
  }
  TORCH_CHECK(lse_in.dim() == 3 && lse_in.size(0) == n.B && lse_in.size(1) == n.H && lse_in.size(2) == n.L,
              "flash_backward: lse must have shape [B, h, L] = [", n.B, ", ", n.H, ", ", n.L, "], got ",
              lse_in.sizes());
  TORCH_CHECK(lse_in.scalar_type() == q_in.scalar_type(), "flash_backward: lse must be ", q_in.scalar_type(),
              ", got ", lse_in.scalar_type());
  const at::Tensor gout = gout_in.contiguous(), q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor out = out_in.contiguous(), lse = lse_in.contiguous();
  std::optional<at::Tensor> mask;
  if (mask_in.has_value()) mask = mask_in->contiguous();
  at::Tensor dq = at::empty({n.B, n.H, n.L, n.D}, q.options());
  at::Tensor dk = at::empty({n.B, n.H, n.S, n.D}, q.options());
  at::Tensor dv = at::empty({n.B, n.H, n.S, n.DV}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "flash_backward", [&] {
    backward_kernel<scalar_t>(gout.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(),
                              k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                              mask ? mask->const_data_ptr<bool>() : nullptr, out.const_data_ptr<scalar_t>(),
                              lse.const_data_ptr<scalar_t>(), dq.mutable_data_ptr<scalar_t>(),
                              dk.mutable_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>(), n, causal,
                              static_cast<scalar_t>(scale));
  });
  return {dq, dk, dv};
}

}  // namespace
}  // namespace attnbench_mhsa

TORCH_LIBRARY(attnbench_mhsa, m) {
  m.def("flash_forward(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal, float scale) -> (Tensor, Tensor)");
  m.def(
      "flash_backward(Tensor gout, Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor out, Tensor lse, bool causal, "
      "float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(attnbench_mhsa, CPU, m) {
  m.impl("flash_forward", &attnbench_mhsa::flash_forward_cpu);
  m.impl("flash_backward", &attnbench_mhsa::flash_backward_cpu);
}
