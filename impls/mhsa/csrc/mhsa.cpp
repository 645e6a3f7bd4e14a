// Fused multi-head attention, CPU kernels and the op schema (namespace attnbench_mhsa).
//
//   flash_forward(q [B,h,L,d], k [B,h,S,d], v [B,h,S,dv], mask bool [B,S]?, causal, scale)
//       -> (out [B,h,L,dv], lse [B,h,L])
//   flash_backward(gout, q, k, v, mask, out, lse, causal, scale) -> (dq, dk, dv)
//
// Forward: one task per (b, h, tile of kFwdQueryTile query rows); keys in tiles
// of kFwdKeyTile; per tile S = (scale·Q)·Kᵀ and O += P·V run as register-blocked
// tile products (`gemm` below), the row max / exp / sum of the online softmax as
// 256-bit vector loops (impls/_common/csrc/vec_math.h); only the per-row
// log-sum-exp is saved. Backward: one task per (b, h) (deterministic: fixed
// summation order, no atomics); per key tile and query tile it recomputes P from
// lse and runs dP = dO·Vᵀ, dS, dV += Pᵀ·dO, dK += dSᵀ·Q, dQ += dS·K as tile
// products. Padded keys are dropped when the keys are packed, so they cost
// nothing. Neither pass allocates anything of size L×S (tiles and per-(b, h)
// copies of K, V, Q, dO only).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "mhsa.h"
#include "vec_math.h"

namespace attnbench_mhsa {
namespace {

// Tile sizes (rows × keys); measured at L = S = 1024, d = dv = 32 (docs/mhsa.md).
constexpr int64_t kFwdQueryTile = 64;
constexpr int64_t kFwdKeyTile = 128;
constexpr int64_t kBwdQueryTile = 64;
constexpr int64_t kBwdKeyTile = 64;

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

// ---- register-blocked tile products -------------------------------------------------
//
// C[M, N] (+)= A[M, K] · B[K, N] for small tiles, N a multiple of the vector width
// W (8 floats / 4 doubles). A is read through strides, A(r, t) = a[r·ars + t·ats],
// so the same kernel computes P·V (ats = 1) and Pᵀ·dO (ars = 1); B and C are row
// major. The micro-kernel keeps an R × NV block of 256-bit accumulators (R rows,
// NV·W columns) in registers over the whole reduction: per t it loads NV vectors
// of B, broadcasts R scalars of A and issues R·NV FMAs.

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t W = 32 / sizeof(T);
};

template <typename T, int R, int NV>
inline void micro(const T* a, int64_t ars, int64_t ats, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t K,
                  bool accumulate) {
  using vec = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::W;
  vec x[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < NV; ++u) {
      if (accumulate) {
        std::memcpy(&x[r][u], c + r * ldc + u * W, sizeof(vec));
      } else {
        x[r][u] = vec{};
      }
    }
  }
  for (int64_t t = 0; t < K; ++t) {
    vec bv[NV];
    for (int u = 0; u < NV; ++u) std::memcpy(&bv[u], b + t * ldb + u * W, sizeof(vec));
    for (int r = 0; r < R; ++r) {
      const T av = a[r * ars + t * ats];
      for (int u = 0; u < NV; ++u) x[r][u] += av * bv[u];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < NV; ++u) std::memcpy(c + r * ldc + u * W, &x[r][u], sizeof(vec));
  }
}

template <typename T, int NV>
inline void gemm_columns(int64_t M, int64_t K, const T* a, int64_t ars, int64_t ats, const T* b, int64_t ldb, T* c,
                         int64_t ldc, bool accumulate) {
  constexpr int kRows = 6;  // 6 × 2 accumulators + 2 loads + 1 broadcast: 15 of 16 AVX registers
  int64_t i = 0;
  for (; i + kRows <= M; i += kRows) micro<T, kRows, NV>(a + i * ars, ars, ats, b, ldb, c + i * ldc, ldc, K, accumulate);
  const T* ai = a + i * ars;
  T* ci = c + i * ldc;
  switch (M - i) {
    case 5: micro<T, 5, NV>(ai, ars, ats, b, ldb, ci, ldc, K, accumulate); break;
    case 4: micro<T, 4, NV>(ai, ars, ats, b, ldb, ci, ldc, K, accumulate); break;
    case 3: micro<T, 3, NV>(ai, ars, ats, b, ldb, ci, ldc, K, accumulate); break;
    case 2: micro<T, 2, NV>(ai, ars, ats, b, ldb, ci, ldc, K, accumulate); break;
    case 1: micro<T, 1, NV>(ai, ars, ats, b, ldb, ci, ldc, K, accumulate); break;
    default: break;
  }
}

// C[M, N] (+)= A · B, N a multiple of Vec<T>::W.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t ars, int64_t ats, const T* b, int64_t ldb, T* c,
          int64_t ldc, bool accumulate) {
  constexpr int64_t W = Vec<T>::W;
  int64_t j = 0;
  for (; j + 2 * W <= N; j += 2 * W) gemm_columns<T, 2>(M, K, a, ars, ats, b + j, ldb, c + j, ldc, accumulate);
  if (j < N) gemm_columns<T, 1>(M, K, a, ars, ats, b + j, ldb, c + j, ldc, accumulate);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- one (b, h)'s keys and values, packed --------------------------------------------
//
// Only the allowed (unpadded) keys are packed, in order: key c of the packed
// list is key idx[c] of the input, so padded keys cost nothing (causal masking
// still uses idx). Keys come in tiles of `tile`; within a tile K is stored
// transposed [D][tile] (the B operand of Q·Kᵀ), and so is V for the
// backward's dO·Vᵀ. Columns past the last key of the last tile are zero.
template <typename T>
struct PackedKeys {
  int64_t tile = 0;           // keys per tile
  int64_t bh = -1;
  int64_t count = 0;          // allowed keys
  std::vector<int64_t> idx;   // [count] original key index
  std::vector<T> k_t;         // [tiles][D][tile]
  std::vector<T> v_t;         // [tiles][DV][tile]  (backward)
  std::vector<T> k_rows;      // [tiles·tile][Dp]   (backward: B of dS·K)
  std::vector<T> v_rows;      // [tiles·tile][DVp]  (forward: B of P·V)

  explicit PackedKeys(int64_t tile_) : tile(tile_) {}

  void pack(int64_t bh_, const T* k, const T* v, const bool* mask, const Dims& n, bool forward) {
    bh = bh_;
    const int64_t b = bh / n.H, Dp = round_up(n.D, Vec<T>::W), DVp = round_up(n.DV, Vec<T>::W);
    idx.resize(n.S);
    count = 0;
    for (int64_t j = 0; j < n.S; ++j) {
      if (mask == nullptr || !mask[b * n.S + j]) idx[count++] = j;
    }
    const int64_t cap = round_up(count, tile);
    const T* kb = k + bh * n.S * n.D;
    const T* vb = v + bh * n.S * n.DV;
    k_t.assign(cap * n.D, T(0));
    for (int64_t c = 0; c < count; ++c) {
      const T* kj = kb + idx[c] * n.D;
      T* dst = k_t.data() + (c / tile) * n.D * tile + c % tile;
      for (int64_t t = 0; t < n.D; ++t) dst[t * tile] = kj[t];
    }
    if (forward) {
      v_rows.assign(cap * DVp, T(0));
      for (int64_t c = 0; c < count; ++c) std::memcpy(v_rows.data() + c * DVp, vb + idx[c] * n.DV, n.DV * sizeof(T));
    } else {
      v_t.assign(cap * n.DV, T(0));
      k_rows.assign(cap * Dp, T(0));
      for (int64_t c = 0; c < count; ++c) {
        const T* vj = vb + idx[c] * n.DV;
        T* dst = v_t.data() + (c / tile) * n.DV * tile + c % tile;
        for (int64_t t = 0; t < n.DV; ++t) dst[t * tile] = vj[t];
        std::memcpy(k_rows.data() + c * Dp, kb + idx[c] * n.D, n.D * sizeof(T));
      }
    }
  }

  // Packed keys that some query row < i_end may see.
  int64_t visible(int64_t i_end, bool causal) const {
    if (!causal) return count;
    return std::lower_bound(idx.begin(), idx.begin() + count, i_end) - idx.begin();
  }
};

// Scores of a tile's row i at packed columns [0, nk_p): columns past nk (tile
// tail) and, on a diagonal tile, columns whose key comes after row i get `fill`.
template <typename T>
inline void mask_row(T* row, const int64_t* idx, int64_t nk, int64_t nk_p, int64_t i, bool diagonal, T fill) {
  for (int64_t jj = nk; jj < nk_p; ++jj) row[jj] = fill;
  if (diagonal) {
    for (int64_t jj = nk - 1; jj >= 0 && idx[jj] > i; --jj) row[jj] = fill;
  }
}

template <typename scalar_t>
void forward_kernel(const scalar_t* q, const scalar_t* k, const scalar_t* v, const bool* mask, scalar_t* out,
                    scalar_t* lse, const Dims& n, bool causal, scalar_t scale) {
  using T = scalar_t;  // float or double on the CPU; accumulation in T
  constexpr int64_t W = Vec<T>::W;
  const int64_t DVp = round_up(n.DV, W);
  const int64_t q_tiles = (n.L + kFwdQueryTile - 1) / kFwdQueryTile;
  at::parallel_for(0, n.B * n.H * q_tiles, 1, [&](int64_t begin, int64_t end) {
    PackedKeys<T> keys(kFwdKeyTile);  // re-packed when the task's (b, h) changes
    std::vector<T> q_tile(kFwdQueryTile * n.D), s(kFwdQueryTile * kFwdKeyTile), acc(kFwdQueryTile * DVp), m(kFwdQueryTile),
        l(kFwdQueryTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_tiles, i0 = (task % q_tiles) * kFwdQueryTile;
      const int64_t nq = std::min(kFwdQueryTile, n.L - i0);
      if (keys.bh != bh) keys.pack(bh, k, v, mask, n, true);
      const T* qb = q + (bh * n.L + i0) * n.D;
      for (int64_t x = 0; x < nq * n.D; ++x) q_tile[x] = scale * qb[x];  // fold the scale into q
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(m.begin(), m.end(), neg_inf<T>());
      std::fill(l.begin(), l.end(), T(0));
      const int64_t visible = keys.visible(i0 + nq, causal);
      for (int64_t j0 = 0; j0 < visible; j0 += kFwdKeyTile) {
        const int64_t nk = std::min(kFwdKeyTile, visible - j0), nk_p = round_up(nk, W);
        const int64_t* idx = keys.idx.data() + j0;
        const bool diagonal = causal && idx[nk - 1] > i0;
        // s = (scale·Q) Kᵀ over the tile
        gemm<T>(nq, nk_p, n.D, q_tile.data(), n.D, 1, keys.k_t.data() + j0 * n.D, kFwdKeyTile, s.data(), kFwdKeyTile,
                false);
        for (int64_t ii = 0; ii < nq; ++ii) {
          T* row = s.data() + ii * kFwdKeyTile;
          mask_row(row, idx, nk, nk_p, i0 + ii, diagonal, neg_inf<T>());
          const T block_max = attnbench_vec::row_max(row, nk_p);
          if (block_max == neg_inf<T>()) {  // nothing allowed for this row in this tile
            std::fill(row, row + nk_p, T(0));
            continue;
          }
          const T factor = online_rescale(m[ii], l[ii], block_max);
          if (factor != T(1)) {
            T* a = acc.data() + ii * DVp;
            for (int64_t c = 0; c < DVp; ++c) a[c] *= factor;
          }
          l[ii] += attnbench_vec::exp_affine(row, nk_p, T(1), m[ii]);  // masked: exp(−inf) = 0
        }
        // acc += P V over the tile
        gemm<T>(nq, DVp, nk, s.data(), kFwdKeyTile, 1, keys.v_rows.data() + j0 * DVp, DVp, acc.data(), DVp, true);
      }
      for (int64_t ii = 0; ii < nq; ++ii) {
        const T inv = inv_sum(l[ii]);
        T* o = out + (bh * n.L + i0 + ii) * n.DV;
        const T* a = acc.data() + ii * DVp;
        for (int64_t c = 0; c < n.DV; ++c) o[c] = a[c] * inv;
        lse[bh * n.L + i0 + ii] = log_sum_exp(m[ii], l[ii]);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* gout, const scalar_t* q, const scalar_t* k, const scalar_t* v, const bool* mask,
                     const scalar_t* out, const scalar_t* lse, scalar_t* dq, scalar_t* dk, scalar_t* dv, const Dims& n,
                     bool causal, scalar_t scale) {
  using T = scalar_t;
  constexpr int64_t W = Vec<T>::W;
  const int64_t Dp = round_up(n.D, W), DVp = round_up(n.DV, W);
  // One task per (b, h): dK and dV of a key tile are summed over all query tiles
  // and dQ over all key tiles inside one task, in a fixed order (deterministic).
  at::parallel_for(0, n.B * n.H, 1, [&](int64_t begin, int64_t end) {
    PackedKeys<T> keys(kBwdKeyTile);
    std::vector<T> q_rows(n.L * Dp, T(0)), g_rows(n.L * DVp, T(0)), dq_acc(n.L * Dp), Drow(n.L);
    std::vector<T> p(kBwdQueryTile * kBwdKeyTile), ds(kBwdQueryTile * kBwdKeyTile), dk_acc(kBwdKeyTile * Dp), dv_acc(kBwdKeyTile * DVp);
    for (int64_t bh = begin; bh < end; ++bh) {
      keys.pack(bh, k, v, mask, n, false);
      const T* qb = q + bh * n.L * n.D;
      const T* gb = gout + bh * n.L * n.DV;
      const T* ob = out + bh * n.L * n.DV;
      const T* lb = lse + bh * n.L;
      for (int64_t i = 0; i < n.L; ++i) {
        std::memcpy(q_rows.data() + i * Dp, qb + i * n.D, n.D * sizeof(T));
        std::memcpy(g_rows.data() + i * DVp, gb + i * n.DV, n.DV * sizeof(T));
        T sum = 0;
        for (int64_t c = 0; c < n.DV; ++c) sum += gb[i * n.DV + c] * ob[i * n.DV + c];
        Drow[i] = sum;
      }
      std::fill(dq_acc.begin(), dq_acc.end(), T(0));
      // Padded keys get exactly 0; the allowed ones are overwritten below.
      std::fill(dk + bh * n.S * n.D, dk + (bh + 1) * n.S * n.D, T(0));
      std::fill(dv + bh * n.S * n.DV, dv + (bh + 1) * n.S * n.DV, T(0));
      for (int64_t j0 = 0; j0 < keys.count; j0 += kBwdKeyTile) {
        const int64_t nk = std::min(kBwdKeyTile, keys.count - j0), nk_p = round_up(nk, W);
        const int64_t* idx = keys.idx.data() + j0;
        std::fill(dk_acc.begin(), dk_acc.end(), T(0));
        std::fill(dv_acc.begin(), dv_acc.end(), T(0));
        for (int64_t i0 = causal ? idx[0] : 0; i0 < n.L; i0 += kBwdQueryTile) {
          const int64_t nq = std::min(kBwdQueryTile, n.L - i0);
          const bool diagonal = causal && idx[nk - 1] > i0;
          gemm<T>(nq, nk_p, n.D, q_rows.data() + i0 * Dp, Dp, 1, keys.k_t.data() + j0 * n.D, kBwdKeyTile, p.data(),
                  kBwdKeyTile, false);  // q·k (unscaled)
          gemm<T>(nq, nk_p, n.DV, g_rows.data() + i0 * DVp, DVp, 1, keys.v_t.data() + j0 * n.DV, kBwdKeyTile, ds.data(),
                  kBwdKeyTile, false);  // dp = gout·v
          for (int64_t ii = 0; ii < nq; ++ii) {
            const int64_t i = i0 + ii;
            T* prow = p.data() + ii * kBwdKeyTile;
            T* drow = ds.data() + ii * kBwdKeyTile;
            const T lse_i = lb[i];
            if (lse_i == neg_inf<T>()) {  // fully masked row: contributes 0 everywhere
              std::fill(prow, prow + nk_p, T(0));
              std::fill(drow, drow + nk_p, T(0));
              continue;
            }
            attnbench_vec::exp_affine(prow, nk_p, scale, lse_i);  // p = exp(scale·q·k − lse)
            mask_row(prow, idx, nk, nk_p, i, diagonal, T(0));
            const T Di = Drow[i];
            for (int64_t jj = 0; jj < nk_p; ++jj) drow[jj] = scale * dscore(prow[jj], drow[jj], Di);
          }
          // dV += Pᵀ dO, dK += dSᵀ Q, dQ += dS K (dS carries the scale)
          gemm<T>(nk, DVp, nq, p.data(), 1, kBwdKeyTile, g_rows.data() + i0 * DVp, DVp, dv_acc.data(), DVp, true);
          gemm<T>(nk, Dp, nq, ds.data(), 1, kBwdKeyTile, q_rows.data() + i0 * Dp, Dp, dk_acc.data(), Dp, true);
          gemm<T>(nq, Dp, nk, ds.data(), kBwdKeyTile, 1, keys.k_rows.data() + j0 * Dp, Dp, dq_acc.data() + i0 * Dp, Dp,
                  true);
        }
        for (int64_t jj = 0; jj < nk; ++jj) {
          std::memcpy(dk + (bh * n.S + idx[jj]) * n.D, dk_acc.data() + jj * Dp, n.D * sizeof(T));
          std::memcpy(dv + (bh * n.S + idx[jj]) * n.DV, dv_acc.data() + jj * DVp, n.DV * sizeof(T));
        }
      }
      for (int64_t i = 0; i < n.L; ++i) std::memcpy(dq + (bh * n.L + i) * n.D, dq_acc.data() + i * Dp, n.D * sizeof(T));
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
