// Criss-cross attention (CCNet) CPU kernels and the op schemas.
//
// Ops (forward and backward are separate ops; Python registers fake kernels and
// autograd, see impls/ccnet/ext.py):
//   ca_weight(q, k) -> E                      E: [B, H+W-1, H, W]
//   ca_weight_backward(grad_energy, q, k) -> (dq, dk)
//   ca_map(attn, v) -> out                    out: [B, C, H, W]
//   ca_map_backward(grad_out, attn, v) -> (dattn, dv)
//   cca_fused(q, k, v) -> out                 inference: energy + softmax + aggregation
//   ca_softmax(energy) -> attn                softmax over dim 1 (between the two ops)
//   ca_softmax_backward(grad_attn, attn) -> grad_energy
//
// Every kernel is a gather: each output element is written exactly once from the
// formulas of shared/specs/ccnet.md §2.1 (ccnet.h), so nothing accumulates into
// uninitialised memory and the CPU path is deterministic without atomics.
//
// Speed: work is split over (batch, block of image rows) with at::parallel_for;
// inner loops run along W (contiguous in NCHW) in chunks of two AVX2 registers,
// with 4 output rows (keys or channels) per chunk held in registers, so every
// load of a q/k/v/attention vector feeds 4 FMAs. A block of rows shares the
// column slices of k/v it reads, which keeps them in L1/L2.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "ccnet.h"
#include "ccnet_ops.h"

namespace attnbench_ccnet {
namespace {

constexpr int ZB = 4;  // output rows (keys or channels) per register tile

template <typename T>
constexpr int x_block() {
  return 64 / static_cast<int>(sizeof(T));  // 16 floats or 8 doubles: two AVX2 registers
}

// Register tiles use GCC/Clang vector extensions (one AVX2 register per variable) so
// that the 8 accumulators of a 4 x (2 registers) tile provably stay in registers.
template <typename T>
struct Simd {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int lanes = 32 / static_cast<int>(sizeof(T));
};

template <typename T>
inline typename Simd<T>::type load(const T* p) {
  typename Simd<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void add_to(T* acc, typename Simd<T>::type v) {
  for (int i = 0; i < Simd<T>::lanes; ++i) acc[i] += v[i];
}

// acc[r][x] += sum_t a[r][t * a_ts] * b[t * b_ts + x]    (a: one scalar per row, broadcast)
template <typename T>
inline void tile_bcast(T (&acc)[ZB][x_block<T>()], int64_t nt, const T* const (&a)[ZB], int64_t a_ts, const T* b,
                       int64_t b_ts) {
  using V = typename Simd<T>::type;
  constexpr int N = Simd<T>::lanes;
  V c00{}, c01{}, c10{}, c11{}, c20{}, c21{}, c30{}, c31{};
  const T *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  for (int64_t t = 0; t < nt; ++t) {
    const T* bt = b + t * b_ts;
    const V b0 = load(bt), b1 = load(bt + N);
    const int64_t ai = t * a_ts;
    const V s0 = V{} + a0[ai], s1 = V{} + a1[ai], s2 = V{} + a2[ai], s3 = V{} + a3[ai];
    c00 += s0 * b0;
    c01 += s0 * b1;
    c10 += s1 * b0;
    c11 += s1 * b1;
    c20 += s2 * b0;
    c21 += s2 * b1;
    c30 += s3 * b0;
    c31 += s3 * b1;
  }
  add_to(acc[0], c00), add_to(acc[0] + N, c01), add_to(acc[1], c10), add_to(acc[1] + N, c11);
  add_to(acc[2], c20), add_to(acc[2] + N, c21), add_to(acc[3], c30), add_to(acc[3] + N, c31);
}

// acc[r][x] += sum_t u[t * u_ts + x] * w[r][t * w_ts + x]    (elementwise along x)
template <typename T>
inline void tile_mul(T (&acc)[ZB][x_block<T>()], int64_t nt, const T* u, int64_t u_ts, const T* const (&w)[ZB],
                     int64_t w_ts) {
  using V = typename Simd<T>::type;
  constexpr int N = Simd<T>::lanes;
  V c00{}, c01{}, c10{}, c11{}, c20{}, c21{}, c30{}, c31{};
  const T *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
  for (int64_t t = 0; t < nt; ++t) {
    const T* ut = u + t * u_ts;
    const int64_t wi = t * w_ts;
    const V u0 = load(ut), u1 = load(ut + N);
    c00 += u0 * load(w0 + wi);
    c01 += u1 * load(w0 + wi + N);
    c10 += u0 * load(w1 + wi);
    c11 += u1 * load(w1 + wi + N);
    c20 += u0 * load(w2 + wi);
    c21 += u1 * load(w2 + wi + N);
    c30 += u0 * load(w3 + wi);
    c31 += u1 * load(w3 + wi + N);
  }
  add_to(acc[0], c00), add_to(acc[0] + N, c01), add_to(acc[1], c10), add_to(acc[1] + N, c11);
  add_to(acc[2], c20), add_to(acc[2] + N, c21), add_to(acc[3], c30), add_to(acc[3] + N, c31);
}

// Stores the first nx lanes of a tile row (the tail chunk of a row is partial).
template <typename T>
inline void store_row(const T* acc, int nx, T* dst) {
  for (int x = 0; x < nx; ++x) dst[x] = acc[x];
}

// Inputs live in "padded planes" [B, D, ps]: every (H, W) plane is followed by at
// least one tile width of zeros, so a tile may read past the end of a row (the
// extra lanes are computed and never stored), and ps is chosen so that planes do
// not start at multiples of 512 bytes (a power-of-two plane stride would make the
// per-plane loads of one tile collide in the same L1 sets).
struct Padded {
  at::Tensor data;
  int64_t ps;  // elements per plane
};

inline Padded padded(const at::Tensor& x) {
  const int64_t B = x.size(0), D = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  int64_t ps = (HW + 16 + 15) / 16 * 16;
  while ((ps * static_cast<int64_t>(x.element_size())) % 512 == 0) ps += 16;
  at::Tensor buf = at::empty({B, D, ps}, x.options());
  buf.narrow(2, 0, HW).view({B, D, H, W}).copy_(x);  // any strides in, never misread
  buf.narrow(2, HW, ps - HW).zero_();
  return {buf, ps};
}

struct Geometry {
  int H, W;
  int64_t plane;  // H * W (outputs are plain contiguous tensors)
  int L;          // H + W - 1
};

inline Geometry geometry(const at::Tensor& x) {
  return {static_cast<int>(x.size(2)), static_cast<int>(x.size(3)), x.size(2) * x.size(3),
          static_cast<int>(x.size(2) + x.size(3) - 1)};
}

// Energies of query rows [y0, y1) of one batch element:
//   E[z, y, x] = sum_c q[c, y, x] * k[c, kappa(z; y, x)]
// q, k: padded planes (stride ps); written at energy[z * e_zs + (y - y0) * e_ys + x].
template <typename T>
void energy_rows(const T* q, const T* k, int64_t ps, int channels, const Geometry& g, int y0, int y1, T* energy,
                 int64_t e_zs, int64_t e_ys) {
  constexpr int XB = x_block<T>();
  const int H = g.H, W = g.W;
  for (int x0 = 0; x0 < W; x0 += XB) {
    const int nx = std::min(XB, W - x0);
    // Row part, z = x' < W: a GEMM of the row's keys against its queries.
    for (int y = y0; y < y1; ++y) {
      const T* qrow = q + static_cast<int64_t>(y) * W + x0;
      for (int z0 = 0; z0 < W; z0 += ZB) {
        const T* a[ZB];
        for (int r = 0; r < ZB; ++r) a[r] = k + static_cast<int64_t>(y) * W + std::min(z0 + r, W - 1);
        T acc[ZB][XB] = {};
        tile_bcast<T>(acc, channels, a, ps, qrow, ps);
        for (int r = 0; r < ZB && z0 + r < W; ++r) {
          store_row(acc[r], nx, energy + (z0 + r) * e_zs + (y - y0) * e_ys + x0);
        }
      }
    }
    // Column part: iterate over key rows y' (4 at a time, shared by the block's query
    // rows) and store at slot W + j(y'; y); the self pair y' = y is computed and dropped.
    for (int ky0 = 0; ky0 < H; ky0 += ZB) {
      const T* w[ZB];
      for (int r = 0; r < ZB; ++r) w[r] = k + static_cast<int64_t>(std::min(ky0 + r, H - 1)) * W + x0;
      for (int y = y0; y < y1; ++y) {
        T acc[ZB][XB] = {};
        tile_mul<T>(acc, channels, q + static_cast<int64_t>(y) * W + x0, ps, w, ps);
        for (int r = 0; r < ZB; ++r) {
          const int ky = ky0 + r;
          if (ky >= H || ky == y) continue;
          const int z = W + column_slot(ky, y);
          store_row(acc[r], nx, energy + z * e_zs + (y - y0) * e_ys + x0);
        }
      }
    }
  }
}

// Aggregation for query rows [y0, y1) of one batch element:
//   out[c, y, x] = sum_z attn[z, y, x] * v[c, kappa(z; y, x)]
// attn[z, y, x] at attn[z * a_zs + (y - y0) * a_ys + x] (padded, readable a tile past W);
// v: padded planes (stride v_ps); out: [C, H, W] contiguous.
template <typename T>
void aggregate_rows(const T* attn, int64_t a_zs, int64_t a_ys, const T* v, int64_t v_ps, int channels,
                    const Geometry& g, int y0, int y1, T* out) {
  constexpr int XB = x_block<T>();
  const int H = g.H, W = g.W;
  for (int x0 = 0; x0 < W; x0 += XB) {
    const int nx = std::min(XB, W - x0);
    for (int c0 = 0; c0 < channels; c0 += ZB) {
      const T* vc[ZB];
      for (int r = 0; r < ZB; ++r) vc[r] = v + std::min(c0 + r, channels - 1) * v_ps;
      for (int y = y0; y < y1; ++y) {
        const T* arow = attn + (y - y0) * a_ys + x0;
        T acc[ZB][XB] = {};
        // row keys (y, x'): channel z = x'
        const T* a[ZB];
        for (int r = 0; r < ZB; ++r) a[r] = vc[r] + static_cast<int64_t>(y) * W;
        tile_bcast<T>(acc, W, a, 1, arow, a_zs);
        // column keys y' < y sit at slot y', keys y' > y at slot y' - 1
        const T* w[ZB];
        for (int r = 0; r < ZB; ++r) w[r] = vc[r] + x0;
        tile_mul<T>(acc, y, arow + W * a_zs, a_zs, w, W);
        for (int r = 0; r < ZB; ++r) w[r] = vc[r] + static_cast<int64_t>(y + 1) * W + x0;
        tile_mul<T>(acc, H - 1 - y, arow + (W + y) * a_zs, a_zs, w, W);
        for (int r = 0; r < ZB && c0 + r < channels; ++r) {
          store_row(acc[r], nx, out + (c0 + r) * g.plane + static_cast<int64_t>(y) * W + x0);
        }
      }
    }
  }
}

// Key-side gradient for key rows [y0, y1) of one batch element (spec §2.1):
//   grad[c, y', x'] = sum_{x''} weight[x', y', x''] * query[c, y', x'']
//                   + sum_{y'' != y'} weight[W + j(y'; y''), y'', x'] * query[c, y'', x']
// weight: padded [L, ps] (dE or A); query: padded [C, ps] (q or dOut);
// scratch: (y1 - y0) * W * W + one tile width.
template <typename T>
void key_grad_rows(const T* weight, int64_t w_ps, const T* query, int64_t q_ps, int channels, const Geometry& g,
                   int y0, int y1, T* scratch, T* grad) {
  constexpr int XB = x_block<T>();
  const int H = g.H, W = g.W;
  const int64_t WW = static_cast<int64_t>(W) * W;
  // The row part needs weight[x', y', x''] along x': transpose each row's W x W tile once.
  for (int ky = y0; ky < y1; ++ky) {
    T* t = scratch + (ky - y0) * WW;
    for (int xk = 0; xk < W; ++xk) {
      const T* src = weight + xk * w_ps + static_cast<int64_t>(ky) * W;
      for (int xq = 0; xq < W; ++xq) t[static_cast<int64_t>(xq) * W + xk] = src[xq];
    }
  }
  for (int x0 = 0; x0 < W; x0 += XB) {
    const int nx = std::min(XB, W - x0);
    for (int c0 = 0; c0 < channels; c0 += ZB) {
      const T* qc[ZB];
      for (int r = 0; r < ZB; ++r) qc[r] = query + std::min(c0 + r, channels - 1) * q_ps;
      for (int ky = y0; ky < y1; ++ky) {
        T acc[ZB][XB] = {};
        const T* a[ZB];
        for (int r = 0; r < ZB; ++r) a[r] = qc[r] + static_cast<int64_t>(ky) * W;
        tile_bcast<T>(acc, W, a, 1, scratch + (ky - y0) * WW + x0, W);
        // queries y'' < y' hold key row y' at slot y' - 1; queries y'' > y' at slot y'
        const T* w[ZB];
        for (int r = 0; r < ZB; ++r) w[r] = qc[r] + x0;
        if (ky > 0) tile_mul<T>(acc, ky, weight + (W + ky - 1) * w_ps + x0, W, w, W);
        for (int r = 0; r < ZB; ++r) w[r] = qc[r] + static_cast<int64_t>(ky + 1) * W + x0;
        tile_mul<T>(acc, H - 1 - ky, weight + (W + ky) * w_ps + static_cast<int64_t>(ky + 1) * W + x0, W, w, W);
        for (int r = 0; r < ZB && c0 + r < channels; ++r) {
          store_row(acc[r], nx, grad + (c0 + r) * g.plane + static_cast<int64_t>(ky) * W + x0);
        }
      }
    }
  }
}

inline float exp_fast(float x) { return exp_approx(x); }
inline double exp_fast(double x) { return std::exp(x); }

// Softmax over z for one image row: element (z, x) at e[z * zs + x]; out may be e.
template <typename T>
void softmax_row(const T* e, T* out, int L, int64_t zs, int W, T* stat) {
  T* mx = stat;
  T* sum = stat + W;
  for (int x = 0; x < W; ++x) mx[x] = e[x];
  for (int z = 1; z < L; ++z) {
    const T* ez = e + z * zs;
    for (int x = 0; x < W; ++x) mx[x] = std::max(mx[x], ez[x]);
  }
  for (int x = 0; x < W; ++x) sum[x] = 0;
  for (int z = 0; z < L; ++z) {
    const T* ez = e + z * zs;
    T* oz = out + z * zs;
    for (int x = 0; x < W; ++x) {
      oz[x] = exp_fast(ez[x] - mx[x]);
      sum[x] += oz[x];
    }
  }
  for (int x = 0; x < W; ++x) sum[x] = T(1) / sum[x];
  for (int z = 0; z < L; ++z) {
    T* oz = out + z * zs;
    for (int x = 0; x < W; ++x) oz[x] *= sum[x];
  }
}

// dE = A * (dA - sum_z A * dA) for one image row (same layout as softmax_row).
template <typename T>
void softmax_backward_row(const T* grad_attn, const T* attn, T* grad_energy, int L, int64_t zs, int W, T* stat) {
  for (int x = 0; x < W; ++x) stat[x] = 0;
  for (int z = 0; z < L; ++z) {
    const T* a = attn + z * zs;
    const T* g = grad_attn + z * zs;
    for (int x = 0; x < W; ++x) stat[x] += a[x] * g[x];
  }
  for (int z = 0; z < L; ++z) {
    const T* a = attn + z * zs;
    const T* g = grad_attn + z * zs;
    T* d = grad_energy + z * zs;
    for (int x = 0; x < W; ++x) d[x] = a[x] * (g[x] - stat[x]);
  }
}

// Softmax over z of energies [L][rows][W] (scratch layout, z-stride rows * W), in place.
template <typename T>
void softmax_tile(T* e, int L, int rows, int W, T* stat) {
  const int64_t zs = static_cast<int64_t>(rows) * W;
  for (int yy = 0; yy < rows; ++yy) {
    T* base = e + static_cast<int64_t>(yy) * W;
    softmax_row(base, base, L, zs, W, stat);
  }
}

// Rows per task: blocks of image rows share the k/v column slices they read; keep
// enough tasks (>= 4 per thread where possible) for the threads to balance.
inline int rows_per_task(int64_t B, int H, int cap) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int rows = std::max(1, std::min(cap, H));
  while (rows > 1 && B * ((H + rows - 1) / rows) < 4 * threads) rows /= 2;
  return rows;
}

// Runs f(b, y0, y1, thread) over (batch, block of rows) tasks in parallel.
// row_work: multiply-adds per image row. Small problems run inline on the calling
// thread: a parallel region costs microseconds, and on a busy machine its barrier
// waits for a descheduled thread, which would dominate a tiny case.
template <typename F>
void for_row_blocks(int64_t B, int H, int rows, int64_t row_work, F&& f) {
  constexpr int64_t kMinWorkPerThread = int64_t{1} << 17;
  const int64_t blocks = (H + rows - 1) / rows;
  const int64_t task_work = std::max<int64_t>(1, row_work * rows);
  const int64_t grain = std::max<int64_t>(1, (kMinWorkPerThread + task_work - 1) / task_work);
  at::parallel_for(0, B * blocks, grain, [&](int64_t begin, int64_t end) {
    const int thread = at::get_thread_num();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / blocks;
      const int y0 = static_cast<int>(t % blocks) * rows;
      f(b, y0, std::min(H, y0 + rows), thread);
    }
  });
}

inline void check_cpu(const char* op, const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), op_name(op), ": ", name, " must be a CPU tensor here, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op_name(op),
              ": CPU kernels support float32 and float64; ", name, " has dtype ", x.scalar_type(),
              " (float16/bfloat16 run on CUDA)");
}

// -- kernels shared by forward and backward ops -------------------------------------

// energy [B, L, H, W] from q, k [B, D, H, W] (also dA from dOut, v).
at::Tensor weight_cpu(const Padded& q, const Padded& k, const Geometry& g) {
  const int64_t B = q.data.size(0);
  const int channels = static_cast<int>(q.data.size(1));
  at::Tensor energy = at::empty({B, g.L, g.H, g.W}, q.data.options());
  AT_DISPATCH_FLOATING_TYPES(q.data.scalar_type(), "attnbench_ccnet::ca_weight", [&] {
    const scalar_t* qp = q.data.const_data_ptr<scalar_t>();
    const scalar_t* kp = k.data.const_data_ptr<scalar_t>();
    scalar_t* ep = energy.mutable_data_ptr<scalar_t>();
    const int64_t in_batch = channels * q.ps, e_batch = g.L * g.plane;
    for_row_blocks(B, g.H, rows_per_task(B, g.H, 8), g.plane * g.L * channels / g.H, [&](int64_t b, int y0, int y1, int) {
      energy_rows(qp + b * in_batch, kp + b * in_batch, q.ps, channels, g, y0, y1, ep + b * e_batch + y0 * g.W,
                  g.plane, g.W);
    });
  });
  return energy;
}

// out [B, C, H, W] from attn [B, L, H, W] and v [B, C, H, W] (also dq from dE, k).
at::Tensor map_cpu(const Padded& attn, const Padded& v, const Geometry& g) {
  const int64_t B = v.data.size(0);
  const int channels = static_cast<int>(v.data.size(1));
  at::Tensor out = at::empty({B, channels, g.H, g.W}, v.data.options());
  AT_DISPATCH_FLOATING_TYPES(v.data.scalar_type(), "attnbench_ccnet::ca_map", [&] {
    const scalar_t* ap = attn.data.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.data.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t v_batch = channels * v.ps, a_batch = g.L * attn.ps, o_batch = channels * g.plane;
    for_row_blocks(B, g.H, rows_per_task(B, g.H, 8), g.plane * g.L * channels / g.H, [&](int64_t b, int y0, int y1, int) {
      aggregate_rows(ap + b * a_batch + y0 * g.W, attn.ps, g.W, vp + b * v_batch, v.ps, channels, g, y0, y1,
                     op + b * o_batch);
    });
  });
  return out;
}

// grad [B, C, H, W] from weight [B, L, H, W] and query [B, C, H, W] (dk or dv).
at::Tensor key_grad_cpu(const Padded& weight, const Padded& query, const Geometry& g) {
  const int64_t B = query.data.size(0);
  const int channels = static_cast<int>(query.data.size(1));
  at::Tensor grad = at::empty({B, channels, g.H, g.W}, query.data.options());
  const int rows = rows_per_task(B, g.H, 8);
  // One transpose tile per thread, allocated through ATen so memory reports see it.
  at::Tensor scratch =
      at::empty({at::get_num_threads(), static_cast<int64_t>(rows) * g.W * g.W + 64}, query.data.options());
  AT_DISPATCH_FLOATING_TYPES(query.data.scalar_type(), "attnbench_ccnet::key_grad", [&] {
    const scalar_t* wp = weight.data.const_data_ptr<scalar_t>();
    const scalar_t* qp = query.data.const_data_ptr<scalar_t>();
    scalar_t* sp = scratch.mutable_data_ptr<scalar_t>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    const int64_t q_batch = channels * query.ps, w_batch = g.L * weight.ps, g_batch = channels * g.plane;
    const int64_t s_thread = scratch.size(1);
    for_row_blocks(B, g.H, rows, g.plane * g.L * channels / g.H, [&](int64_t b, int y0, int y1, int thread) {
      key_grad_rows(wp + b * w_batch, weight.ps, qp + b * q_batch, query.ps, channels, g, y0, y1,
                    sp + thread * s_thread, gp + b * g_batch);
    });
  });
  return grad;
}

// -- ops ------------------------------------------------------------------------------

at::Tensor ca_weight(const at::Tensor& q, const at::Tensor& k) {
  check_qk("ca_weight", q, k);
  check_cpu("ca_weight", q, "q");
  return weight_cpu(padded(q), padded(k), geometry(q));
}

std::tuple<at::Tensor, at::Tensor> ca_weight_backward(const at::Tensor& grad_energy, const at::Tensor& q,
                                                      const at::Tensor& k) {
  const char* op = "ca_weight_backward";
  check_qk(op, q, k);
  check_cpu(op, q, "q");
  check_4d(op, grad_energy, "grad_energy", "[B, H+W-1, H, W]");
  check_like(op, grad_energy, "grad_energy", q, "q");
  check_shape(op, grad_energy, "grad_energy", {q.size(0), q.size(2) + q.size(3) - 1, q.size(2), q.size(3)},
              "[B, H+W-1, H, W]", q, "q");
  const Padded de = padded(grad_energy);
  const Geometry g = geometry(q);
  // dq[c, y, x] = sum_z dE[z, y, x] * k[c, kappa(z)]: the aggregation with (dE, k)
  // dk: the key-side gather with (dE, q)
  return {map_cpu(de, padded(k), g), key_grad_cpu(de, padded(q), g)};
}

at::Tensor ca_map(const at::Tensor& attn, const at::Tensor& v) {
  check_attn_v("ca_map", attn, "attn", v);
  check_cpu("ca_map", v, "v");
  return map_cpu(padded(attn), padded(v), geometry(v));
}

std::tuple<at::Tensor, at::Tensor> ca_map_backward(const at::Tensor& grad_out, const at::Tensor& attn,
                                                   const at::Tensor& v) {
  const char* op = "ca_map_backward";
  check_attn_v(op, attn, "attn", v);
  check_cpu(op, v, "v");
  check_4d(op, grad_out, "grad_out", "[B, C, H, W]");
  check_like(op, grad_out, "grad_out", v, "v");
  check_shape(op, grad_out, "grad_out", v.sizes(), "[B, C, H, W]", v, "v");
  const Padded dout = padded(grad_out);
  const Geometry g = geometry(v);
  // dA[z, y, x] = sum_c dOut[c, y, x] * v[c, kappa(z)]: the energy with (dOut, v)
  // dv: the key-side gather with (A, dOut)
  return {weight_cpu(dout, padded(v), g), key_grad_cpu(padded(attn), dout, g)};
}

void check_energy(const char* op, const at::Tensor& x, const char* name) {
  check_4d(op, x, name, "[B, H+W-1, H, W]");
  TORCH_CHECK(x.size(1) == x.size(2) + x.size(3) - 1, op_name(op), ": ", name,
              " must be [B, H+W-1, H, W], got ", x.sizes(), " (dim 1 should be ", x.size(2) + x.size(3) - 1, ")");
  check_cpu(op, x, name);
}

// Softmax over dim 1 of [B, L, H, W] (ATen's dim-1 softmax starts a parallel region even
// for a few elements; this one runs small maps inline and vectorises along W).
at::Tensor ca_softmax(const at::Tensor& energy_in) {
  check_energy("ca_softmax", energy_in, "energy");
  const at::Tensor energy = dense(energy_in);
  const Geometry g = geometry(energy);
  const int64_t B = energy.size(0);
  at::Tensor attn = at::empty_like(energy, at::MemoryFormat::Contiguous);
  at::Tensor stat = at::empty({at::get_num_threads(), 2 * static_cast<int64_t>(g.W)}, energy.options());
  AT_DISPATCH_FLOATING_TYPES(energy.scalar_type(), "attnbench_ccnet::ca_softmax", [&] {
    const scalar_t* ep = energy.const_data_ptr<scalar_t>();
    scalar_t* ap = attn.mutable_data_ptr<scalar_t>();
    scalar_t* sp = stat.mutable_data_ptr<scalar_t>();
    const int64_t batch = g.L * g.plane;
    for_row_blocks(B, g.H, 1, 8 * g.L * g.W, [&](int64_t b, int y0, int y1, int thread) {
      for (int y = y0; y < y1; ++y) {
        const int64_t off = b * batch + static_cast<int64_t>(y) * g.W;
        softmax_row(ep + off, ap + off, g.L, g.plane, g.W, sp + thread * 2 * g.W);
      }
    });
  });
  return attn;
}

at::Tensor ca_softmax_backward(const at::Tensor& grad_attn, const at::Tensor& attn_in) {
  const char* op = "ca_softmax_backward";
  check_energy(op, attn_in, "attn");
  check_4d(op, grad_attn, "grad_attn", "[B, H+W-1, H, W]");
  check_like(op, grad_attn, "grad_attn", attn_in, "attn");
  check_shape(op, grad_attn, "grad_attn", attn_in.sizes(), "[B, H+W-1, H, W]", attn_in, "attn");
  const at::Tensor attn = dense(attn_in), grad = dense(grad_attn);
  const Geometry g = geometry(attn);
  const int64_t B = attn.size(0);
  at::Tensor grad_energy = at::empty_like(attn, at::MemoryFormat::Contiguous);
  at::Tensor stat = at::empty({at::get_num_threads(), static_cast<int64_t>(g.W)}, attn.options());
  AT_DISPATCH_FLOATING_TYPES(attn.scalar_type(), "attnbench_ccnet::ca_softmax_backward", [&] {
    const scalar_t* ap = attn.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* dp = grad_energy.mutable_data_ptr<scalar_t>();
    scalar_t* sp = stat.mutable_data_ptr<scalar_t>();
    const int64_t batch = g.L * g.plane;
    for_row_blocks(B, g.H, 1, 4 * g.L * g.W, [&](int64_t b, int y0, int y1, int thread) {
      for (int y = y0; y < y1; ++y) {
        const int64_t off = b * batch + static_cast<int64_t>(y) * g.W;
        softmax_backward_row(gp + off, ap + off, dp + off, g.L, g.plane, g.W, sp + thread * g.W);
      }
    });
  });
  return grad_energy;
}

at::Tensor cca_fused(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in) {
  const char* op = "cca_fused";
  check_qk(op, q_in, k_in);
  check_cpu(op, q_in, "q");
  check_4d(op, v_in, "v", "[B, C, H, W]");
  check_like(op, v_in, "v", q_in, "q");
  TORCH_CHECK(v_in.size(0) == q_in.size(0) && v_in.size(2) == q_in.size(2) && v_in.size(3) == q_in.size(3),
              op_name(op), ": v must be [B, C, H, W] with B, H, W of q ", q_in.sizes(), ", got ", v_in.sizes());
  const Padded q = padded(q_in), k = padded(k_in), v = padded(v_in);
  const Geometry g = geometry(q_in);
  const int64_t B = q_in.size(0);
  const int cq = static_cast<int>(q_in.size(1)), cv = static_cast<int>(v_in.size(1));
  at::Tensor out = at::empty({B, cv, g.H, g.W}, v_in.options());
  const int rows = rows_per_task(B, g.H, 4);
  // Per thread: the energies of one block of rows ([L, rows, W], never the whole map),
  // the softmax statistics of one row and one tile width of slack for reads past W.
  const int64_t tile = static_cast<int64_t>(g.L) * rows * g.W + 2 * g.W + 64;
  at::Tensor scratch = at::empty({at::get_num_threads(), tile}, q_in.options());
  AT_DISPATCH_FLOATING_TYPES(q_in.scalar_type(), "attnbench_ccnet::cca_fused", [&] {
    const scalar_t* qp = q.data.const_data_ptr<scalar_t>();
    const scalar_t* kp = k.data.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.data.const_data_ptr<scalar_t>();
    scalar_t* sp = scratch.mutable_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const int64_t q_batch = cq * q.ps, v_batch = cv * v.ps, o_batch = cv * g.plane;
    for_row_blocks(B, g.H, rows, g.plane * g.L * (cq + cv) / g.H, [&](int64_t b, int y0, int y1, int thread) {
      const int n = y1 - y0;
      const int64_t zs = static_cast<int64_t>(n) * g.W;
      scalar_t* e = sp + thread * tile;
      energy_rows(qp + b * q_batch, kp + b * q_batch, q.ps, cq, g, y0, y1, e, zs, g.W);
      softmax_tile(e, g.L, n, g.W, e + g.L * zs);
      aggregate_rows(e, zs, g.W, vp + b * v_batch, v.ps, cv, g, y0, y1, op_ + b * o_batch);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(attnbench_ccnet, m) {
  m.def("ca_weight(Tensor q, Tensor k) -> Tensor");
  m.def("ca_weight_backward(Tensor grad_energy, Tensor q, Tensor k) -> (Tensor, Tensor)");
  m.def("ca_map(Tensor attn, Tensor v) -> Tensor");
  m.def("ca_map_backward(Tensor grad_out, Tensor attn, Tensor v) -> (Tensor, Tensor)");
  m.def("cca_fused(Tensor q, Tensor k, Tensor v) -> Tensor");
  m.def("ca_softmax(Tensor energy) -> Tensor");
  m.def("ca_softmax_backward(Tensor grad_attn, Tensor attn) -> Tensor");
}

TORCH_LIBRARY_IMPL(attnbench_ccnet, CPU, m) {
  m.impl("ca_weight", &ca_weight);
  m.impl("ca_weight_backward", &ca_weight_backward);
  m.impl("ca_map", &ca_map);
  m.impl("ca_map_backward", &ca_map_backward);
  m.impl("cca_fused", &cca_fused);
  m.impl("ca_softmax", &ca_softmax);
  m.impl("ca_softmax_backward", &ca_softmax_backward);
}

}  // namespace attnbench_ccnet
