// Memory-lean softmax attention: keys in tiles, online softmax, per-row
// log-sum-exp saved for backward, scores recomputed there (flash-attention
// style). The caller may ask the forward to keep the scaled scores (B·N·M) for
// the backward instead; otherwise no N×M matrix is ever stored: the largest temporaries are one
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
#include <type_traits>

#include "softmax_math.h"
#if !defined(__CUDACC__)
#include "vec_math.h"
#endif

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

#if !defined(__CUDACC__)
// ---- CPU fast path (host compiler only; nvcc sees the generic drivers below) ----------
//
// One at::parallel_for over (batch, query tile) for the forward and over
// (batch, chunk of key tiles) for the backward; inside a task the tile products
// are direct BLAS calls (sgemm_/dgemm_ as exported by libtorch_cpu, weak, with
// an at::mm fallback; a BLAS call inside a parallel region runs single-threaded)
// on raw pointers into the channels-first [C, N] operands, and the per-row softmax work is one fused
// pass per score row with the vector exp/max/sum of vec_math.h. Scratch per
// task: one [TQ, TK] score tile (two in backward), a [TQ, Cv] accumulator.

}  // namespace attnbench_tiles

// The Fortran BLAS that libtorch_cpu exports on x86-64 wheels (MKL). Declared weak:
// a torch without these symbols still loads the extension, and blas_gemm falls
// back to at::mm on views of the same memory.
extern "C" {
__attribute__((weak)) void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                                  const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                                  const float* beta, float* c, const int* ldc);
__attribute__((weak)) void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                                  const double* alpha, const double* a, const int* lda, const double* b,
                                  const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace attnbench_tiles {
namespace cpu {

// Query rows per task tile (the key tile is the op's key_block): 256 when the
// channels make the tile products dominate (bigger BLAS calls), else 128 (the
// score tiles stay in L2). Measured at C = 64 and 512, docs/nonlocal.md.
inline int64_t query_tile(int64_t Ck, int64_t Cv) { return Ck + Cv >= 256 ? 256 : 128; }

// Column-major C[m, n] = alpha · op(A) op(B) + beta · C through ATen (no BLAS symbols).
template <typename scalar_t>
void aten_gemm(char ta, char tb, int m, int n, int k, scalar_t alpha, const scalar_t* a, int lda, const scalar_t* b,
               int ldb, scalar_t beta, scalar_t* c, int ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  auto view = [&](const scalar_t* p, int rows, int cols, int ld, bool transposed) {
    // op(X)[i, j] of a column-major X: X[i + j·ld], or X[j + i·ld] when transposed
    return at::from_blob(const_cast<scalar_t*>(p), {rows, cols},
                         transposed ? at::IntArrayRef{ld, 1} : at::IntArrayRef{1, ld}, opts);
  };
  at::Tensor out = view(c, m, n, ldc, false);
  at::Tensor prod = at::mm(view(a, m, k, lda, ta != 'N'), view(b, k, n, ldb, tb != 'N'));
  if (beta == scalar_t(0)) {
    out.copy_(prod.mul_(alpha));
  } else {
    out.mul_(beta).add_(prod, alpha);
  }
}

inline void blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                      int ldb, float beta, float* c, int ldc) {
  if (sgemm_ != nullptr) {
    sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
  } else {
    aten_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}
inline void blas_gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
                      int ldb, double beta, double* c, int ldc) {
  if (dgemm_ != nullptr) {
    dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
  } else {
    aten_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

// Column-major C[m, n] = alpha · op(A) op(B) + beta · C (BLAS conventions; every
// operand here is a row-major [C, N] slice read as its column-major transpose).
template <typename T>
inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS would scale C by beta; do it here (beta is 0 or 1 in this file)
    if (beta == T(0)) {
      for (int64_t col = 0; col < n; ++col) std::fill(c + col * ldc, c + col * ldc + m, T(0));
    }
    return;
  }
  blas_gemm(ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
            static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

// q [B, Ck, N], k [B, Ck, M], v [B, Cv, M] -> out [B, Cv, N], lse [B, N] (all contiguous);
// saved [B, N, M]: the scaled scores, for the backward to reuse (nullptr: not kept).
template <typename T>
void flash_forward(const T* q, const T* k, const T* v, T* out, T* lse, T* saved, int64_t B, int64_t Ck, int64_t Cv,
                   int64_t N, int64_t M, T scale, int64_t TK, const at::TensorOptions& opts) {
  const int64_t TQ = std::min(query_tile(Ck, Cv), N);
  const int64_t q_tiles = (N + TQ - 1) / TQ;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, B * q_tiles, 1, [&](int64_t begin, int64_t end) {
    // per-task scratch through the c10 allocator (so memory probes see it)
    auto scratch = at::empty({TQ * TK + TQ * Cv + 2 * TQ}, opts);
    T* s = scratch.data_ptr<T>();
    T* acc = s + TQ * TK;  // [TQ][Cv]
    T* m = acc + TQ * Cv;
    T* l = m + TQ;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / q_tiles, i0 = (task % q_tiles) * TQ, nq = std::min(TQ, N - i0);
      const T* qb = q + b * Ck * N;
      const T* kb = k + b * Ck * M;
      const T* vb = v + b * Cv * M;
      std::fill(acc, acc + nq * Cv, T(0));
      std::fill(m, m + nq, neg_inf);
      std::fill(l, l + nq, T(0));
      for (int64_t j0 = 0; j0 < M; j0 += TK) {
        const int64_t t = std::min(TK, M - j0);
        // s[ii][jj] = scale · Σ_c q[c][i0+ii] k[c][j0+jj]
        gemm<T>('N', 'T', t, nq, Ck, scale, kb + j0, M, qb + i0, N, T(0), s, TK);
        if (saved != nullptr) {
          for (int64_t ii = 0; ii < nq; ++ii) std::copy(s + ii * TK, s + ii * TK + t, saved + (b * N + i0 + ii) * M + j0);
        }
        for (int64_t ii = 0; ii < nq; ++ii) {
          T* row = s + ii * TK;
          const T tile_max = attnbench_vec::row_max(row, t);
          if (tile_max > m[ii]) {
            if (l[ii] != T(0)) {  // rescale the earlier tiles' sum and accumulator
              const T alpha = std::exp(m[ii] - tile_max);
              l[ii] *= alpha;
              T* a = acc + ii * Cv;
              for (int64_t c = 0; c < Cv; ++c) a[c] *= alpha;
            }
            m[ii] = tile_max;
          }
          l[ii] += attnbench_vec::exp_affine(row, t, T(1), m[ii]);
        }
        // acc[ii][c] += Σ_jj p[ii][jj] v[c][j0+jj]
        gemm<T>('T', 'N', Cv, nq, t, T(1), vb + j0, M, s, TK, T(1), acc, Cv);
      }
      T* ob = out + b * Cv * N + i0;
      for (int64_t ii = 0; ii < nq; ++ii) {
        const T inv = T(1) / l[ii];
        const T* a = acc + ii * Cv;
        for (int64_t c = 0; c < Cv; ++c) ob[c * N + ii] = a[c] * inv;
        lse[b * N + i0 + ii] = m[ii] + std::log(l[ii]);
      }
    }
  });
}

// Gradients of flash_forward; dq, dk, dv must be zero on entry. Key tiles are
// split into `chunks` contiguous groups per batch; a task = (batch, chunk)
// owns its dk/dv columns and sums dq into its own [Ck, N] slice of dq_part
// (nullptr when chunks == 1: straight into dq), reduced in chunk order after.
// The summation order depends on the chunk count only: deterministic.
// saved: the forward's scaled scores [B, N, M], copied instead of recomputed (nullptr:
// recompute them, one Ck-deep product per tile).
template <typename T>
void flash_backward(const T* gout, const T* q, const T* k, const T* v, const T* out, const T* lse, const T* saved,
                    T* dq, T* dk, T* dv, T* dq_part, int64_t chunks, int64_t B, int64_t Ck, int64_t Cv, int64_t N,
                    int64_t M, T scale, int64_t TK, const at::TensorOptions& opts) {
  const int64_t TQ = std::min(query_tile(Ck, Cv), N);
  const int64_t k_tiles = (M + TK - 1) / TK;
  // Dr[b][i] = Σ_c gout[b][c][i] · out[b][c][i]
  auto Dt = at::zeros({B, N}, opts);
  T* Dr = Dt.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* d = Dr + b * N;
      for (int64_t c = 0; c < Cv; ++c) {
        const T* g = gout + (b * Cv + c) * N;
        const T* o = out + (b * Cv + c) * N;
        for (int64_t i = 0; i < N; ++i) d[i] += g[i] * o[i];
      }
    }
  });
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    auto scratch = at::empty({2 * TQ * TK}, opts);
    T* p = scratch.data_ptr<T>();
    T* ds = p + TQ * TK;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, chunk = task % chunks;
      const int64_t jt_begin = chunk * k_tiles / chunks, jt_end = (chunk + 1) * k_tiles / chunks;
      const T* qb = q + b * Ck * N;
      const T* kb = k + b * Ck * M;
      const T* vb = v + b * Cv * M;
      const T* gb = gout + b * Cv * N;
      const T* lb = lse + b * N;
      const T* db = Dr + b * N;
      T* dqb = dq_part != nullptr ? dq_part + task * Ck * N : dq + b * Ck * N;
      T* dkb = dk + b * Ck * M;
      T* dvb = dv + b * Cv * M;
      for (int64_t jt = jt_begin; jt < jt_end; ++jt) {
        const int64_t j0 = jt * TK, t = std::min(TK, M - j0);
        for (int64_t i0 = 0; i0 < N; i0 += TQ) {
          const int64_t nq = std::min(TQ, N - i0);
          if (saved != nullptr) {
            for (int64_t ii = 0; ii < nq; ++ii) {
              const T* row = saved + (b * N + i0 + ii) * M + j0;
              std::copy(row, row + t, p + ii * TK);
            }
          } else {
            gemm<T>('N', 'T', t, nq, Ck, scale, kb + j0, M, qb + i0, N, T(0), p, TK);  // scaled scores
          }
          gemm<T>('N', 'T', t, nq, Cv, T(1), vb + j0, M, gb + i0, N, T(0), ds, TK);  // dp = gout·v
          for (int64_t ii = 0; ii < nq; ++ii) {
            T* prow = p + ii * TK;
            T* drow = ds + ii * TK;
            attnbench_vec::exp_affine(prow, t, T(1), lb[i0 + ii]);  // p = exp(s − lse)
            const T Di = db[i0 + ii];
            for (int64_t jj = 0; jj < t; ++jj) drow[jj] = scale * prow[jj] * (drow[jj] - Di);
          }
          // dv[c][j] += Σ_i p[i][j] gout[c][i];  dk[c][j] += Σ_i ds[i][j] q[c][i];  dq[c][i] += Σ_j ds[i][j] k[c][j]
          gemm<T>('N', 'N', t, Cv, nq, T(1), p, TK, gb + i0, N, T(1), dvb + j0, M);
          gemm<T>('N', 'N', t, Ck, nq, T(1), ds, TK, qb + i0, N, T(1), dkb + j0, M);
          gemm<T>('T', 'N', nq, Ck, t, T(1), ds, TK, kb + j0, M, T(1), dqb + i0, N);
        }
      }
    }
  });
}

// Number of key-tile chunks per batch in the backward: enough tasks for the
// threads (fixed for a fixed thread count), 1 on one thread.
inline int64_t backward_chunks(int64_t B, int64_t k_tiles) {
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || B >= threads) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(k_tiles, (threads + B - 1) / B));
}

inline std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, double scale, int64_t block,
                                                            at::Tensor* scores) {
  const int64_t B = q.size(0), Ck = q.size(1), N = q.size(2), M = k.size(2), Cv = v.size(1);
  auto out = at::empty({B, Cv, N}, q.options());
  auto lse = at::empty({B, N}, q.options());
  if (scores != nullptr) *scores = at::empty({B, N, M}, q.options());
  if (B == 0 || N == 0) return {out, lse};
  const int64_t TK = tile_size(block, M);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "softmax_tiles forward (cpu)", [&] {
    flash_forward<scalar_t>(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                            out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<scalar_t>(),
                            scores != nullptr ? scores->mutable_data_ptr<scalar_t>() : nullptr, B, Ck, Cv, N, M,
                            static_cast<scalar_t>(scale), TK, q.options());
  });
  return {out, lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& gout, const at::Tensor& q,
                                                                         const at::Tensor& k, const at::Tensor& v,
                                                                         const at::Tensor& out, const at::Tensor& lse,
                                                                         double scale, int64_t block,
                                                                         const at::Tensor* scores) {
  const int64_t B = q.size(0), Ck = q.size(1), N = q.size(2), M = k.size(2), Cv = v.size(1);
  auto dq = at::zeros_like(q);
  auto dk = at::zeros_like(k);
  auto dv = at::zeros_like(v);
  if (B == 0 || N == 0) return {dq, dk, dv};
  const int64_t TK = tile_size(block, M);
  const int64_t chunks = backward_chunks(B, (M + TK - 1) / TK);
  at::Tensor dq_part;
  if (chunks > 1) dq_part = at::zeros({B, chunks, Ck, N}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "softmax_tiles backward (cpu)", [&] {
    flash_backward<scalar_t>(gout.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(),
                             k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                             out.const_data_ptr<scalar_t>(), lse.const_data_ptr<scalar_t>(),
                             scores != nullptr ? scores->const_data_ptr<scalar_t>() : nullptr,
                             dq.mutable_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(),
                             dv.mutable_data_ptr<scalar_t>(),
                             chunks > 1 ? dq_part.mutable_data_ptr<scalar_t>() : nullptr, chunks, B, Ck, Cv, N, M,
                             static_cast<scalar_t>(scale), TK, q.options());
  });
  if (chunks > 1) {  // fixed order: chunk 0, 1, ...
    for (int64_t c = 0; c < chunks; ++c) dq.add_(dq_part.select(1, c));
  }
  return {dq, dk, dv};
}

}  // namespace cpu
#endif  // !defined(__CUDACC__)

// q: [B, Ck, N], k: [B, Ck, M], v: [B, Cv, M] (contiguous, compute dtype).
// Returns out [B, Cv, N] and lse [B, N] (compute dtype). With `scores`, also keeps
// the scaled scores [B, N, M] there for the backward (B·N·M values: only where
// autograd needs them and they are small, see impls/non_local/ext.py).
template <class Rows>
std::tuple<at::Tensor, at::Tensor> softmax_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, double scale, int64_t block,
                                                             at::Tensor* scores = nullptr) {
#if !defined(__CUDACC__)
  if constexpr (std::is_same<Rows, CpuRows>::value) return cpu::attention_forward(q, k, v, scale, block, scores);
#endif
  const int64_t B = q.size(0), N = q.size(2), M = k.size(2), Cv = v.size(1);
  auto out = at::empty({B, Cv, N}, q.options());
  auto lse = at::empty({B, N}, q.options());
  if (scores != nullptr) *scores = at::empty({B, N, M}, q.options());
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
      if (scores != nullptr) (*scores)[b].narrow(1, j0, t).copy_(s);
      Rows::online(s, m, l, alpha);
      acc.mul_(alpha.unsqueeze(1));
      acc.addmm_(s, v[b].narrow(1, j0, t).t());  // += P [N, t] · V_tileᵀ [t, Cv]
    }
    out[b].copy_((acc / l.unsqueeze(1)).t());
    lse[b].copy_(m + l.log());
  }
  return {out, lse};
}

// Gradients of softmax_attention_forward w.r.t. q, k, v, with scores recomputed tile by
// tile, or read from the forward's `scores` when it kept them.
template <class Rows>
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_attention_backward(const at::Tensor& gout, const at::Tensor& q,
                                                                          const at::Tensor& k, const at::Tensor& v,
                                                                          const at::Tensor& out, const at::Tensor& lse,
                                                                          double scale, int64_t block,
                                                                          const at::Tensor* scores = nullptr) {
#if !defined(__CUDACC__)
  if constexpr (std::is_same<Rows, CpuRows>::value) {
    return cpu::attention_backward(gout, q, k, v, out, lse, scale, block, scores);
  }
#endif
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
      at::Tensor s;
      if (scores != nullptr) {
        s = (*scores)[b].narrow(1, j0, t).clone();  // [N, t]
      } else {
        s = at::mm(qt, k_tile);  // [N, t]
        if (scale != 1.0) s.mul_(scale);
      }
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
