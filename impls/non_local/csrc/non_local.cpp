// Non-local block: op schemas and CPU kernels (at::parallel_for over query rows).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "non_local_ops.h"

namespace attnbench_nl {

// concat on the CPU without any N×M work: f_ij = ReLU(a_i + b_j)/M is nonzero
// exactly when a_i + b_j > 0, so with the queries in ascending a and the keys in
// descending b the keys that query i sees are a prefix of the key order that only
// grows from one query to the next. One sweep keeps running sums over that prefix,
//   Σ_j v_j and Σ_j b_j v_j  ->  y_i = (a_i Σ v_j + Σ b_j v_j) / M,
// and the backward uses the same sweep for da and the mirrored one (keys in
// ascending b, queries in descending a) for dv and db. O((N + M)·Cv + sorting) per
// batch; sums in double (fixed order: deterministic); extra memory O((N + M)·Cv).
namespace sweep {

using acc_t = double;

// Ascending order of x (descending if `descending`); ties keep index order.
template <typename T>
std::vector<int64_t> order_of(const T* x, int64_t n, bool descending) {
  std::vector<int64_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  if (descending) {
    std::stable_sort(idx.begin(), idx.end(), [x](int64_t p, int64_t r) { return x[p] > x[r]; });
  } else {
    std::stable_sort(idx.begin(), idx.end(), [x](int64_t p, int64_t r) { return x[p] < x[r]; });
  }
  return idx;
}

// Running sums over the rows r = ord[0..p) of rows[r][0..C) that satisfy
// x_s + y[r] > 0, for the queries s in ascending order of x; calls
// visit(s, sum, weighted_sum) with Σ rows[r] and Σ y[r]·rows[r].
template <typename T, class Visit>
void prefix_sweep(const T* x, const std::vector<int64_t>& x_asc, const T* y, const std::vector<int64_t>& y_desc,
                  const T* rows, int64_t C, acc_t* sum, acc_t* wsum, Visit visit) {
  std::fill(sum, sum + C, acc_t(0));
  std::fill(wsum, wsum + C, acc_t(0));
  size_t p = 0;
  for (const int64_t s : x_asc) {
    const T xs = x[s];
    while (p < y_desc.size() && xs + y[y_desc[p]] > T(0)) {  // the ReLU test, as the tiled kernels do it
      const int64_t r = y_desc[p++];
      const T* row = rows + r * C;
      const acc_t yr = y[r];
      for (int64_t c = 0; c < C; ++c) {
        sum[c] += row[c];
        wsum[c] += yr * row[c];
      }
    }
    visit(s, xs);
  }
}

// q [B, Ck, N], k [B, Ck, M], v [B, Cv, M], w [2Ck] -> out [B, Cv, N]
inline at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w) {
  const int64_t B = q.size(0), Ck = q.size(1), N = q.size(2), M = k.size(2), Cv = v.size(1);
  const auto a = at::matmul(w.narrow(0, 0, Ck), q).contiguous();   // [B, N]
  const auto bk = at::matmul(w.narrow(0, Ck, Ck), k).contiguous();  // [B, M]
  const auto vt = v.transpose(1, 2).contiguous();                   // [B, M, Cv]
  auto yt = at::empty({B, N, Cv}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "nl concat sweep forward (cpu)", [&] {
    using T = scalar_t;
    const acc_t inv_m = acc_t(1) / static_cast<acc_t>(M);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sv(Cv), sbv(Cv);
      for (int64_t b = begin; b < end; ++b) {
        const T* ab = a.const_data_ptr<T>() + b * N;
        const T* bb = bk.const_data_ptr<T>() + b * M;
        T* yb = yt.mutable_data_ptr<T>() + b * N * Cv;
        prefix_sweep(ab, order_of(ab, N, false), bb, order_of(bb, M, true), vt.const_data_ptr<T>() + b * M * Cv, Cv,
                     sv.data(), sbv.data(), [&](int64_t i, T ai) {
                       T* yi = yb + i * Cv;
                       for (int64_t c = 0; c < Cv; ++c) yi[c] = static_cast<T>((ai * sv[c] + sbv[c]) * inv_m);
                     });
      }
    });
  });
  return yt.transpose(1, 2).contiguous();
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& gout, const at::Tensor& q,
                                                                           const at::Tensor& k, const at::Tensor& v,
                                                                           const at::Tensor& w) {
  const int64_t B = q.size(0), Ck = q.size(1), N = q.size(2), M = k.size(2), Cv = v.size(1);
  const auto w1 = w.narrow(0, 0, Ck), w2 = w.narrow(0, Ck, Ck);
  const auto a = at::matmul(w1, q).contiguous();   // [B, N]
  const auto bk = at::matmul(w2, k).contiguous();  // [B, M]
  const auto vt = v.transpose(1, 2).contiguous();   // [B, M, Cv]
  const auto gt = gout.transpose(1, 2).contiguous();  // [B, N, Cv]
  auto da = at::empty({B, N}, q.options());
  auto db = at::empty({B, M}, q.options());
  auto dvt = at::empty({B, M, Cv}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "nl concat sweep backward (cpu)", [&] {
    using T = scalar_t;
    const acc_t inv_m = acc_t(1) / static_cast<acc_t>(M);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> s1(Cv), s2(Cv);
      for (int64_t b = begin; b < end; ++b) {
        const T* ab = a.const_data_ptr<T>() + b * N;
        const T* bb = bk.const_data_ptr<T>() + b * M;
        const T* vb = vt.const_data_ptr<T>() + b * M * Cv;
        const T* gb = gt.const_data_ptr<T>() + b * N * Cv;
        T* dab = da.mutable_data_ptr<T>() + b * N;
        T* dbb = db.mutable_data_ptr<T>() + b * M;
        T* dvb = dvt.mutable_data_ptr<T>() + b * M * Cv;
        const auto a_asc = order_of(ab, N, false), a_desc = order_of(ab, N, true);
        const auto b_asc = order_of(bb, M, false), b_desc = order_of(bb, M, true);
        // da_i = Σ_{j: a_i + b_j > 0} Σ_c g_ic v_jc / M
        prefix_sweep(ab, a_asc, bb, b_desc, vb, Cv, s1.data(), s2.data(), [&](int64_t i, T) {
          const T* gi = gb + i * Cv;
          acc_t d = 0;
          for (int64_t c = 0; c < Cv; ++c) d += gi[c] * s1[c];
          dab[i] = static_cast<T>(d * inv_m);
        });
        // dv_jc = Σ_{i: a_i + b_j > 0} (a_i + b_j) g_ic / M;  db_j = Σ_i Σ_c g_ic v_jc / M
        prefix_sweep(bb, b_asc, ab, a_desc, gb, Cv, s1.data(), s2.data(), [&](int64_t j, T bj) {
          const T* vj = vb + j * Cv;
          T* dvj = dvb + j * Cv;
          acc_t d = 0;
          for (int64_t c = 0; c < Cv; ++c) {
            dvj[c] = static_cast<T>((bj * s1[c] + s2[c]) * inv_m);
            d += vj[c] * s1[c];
          }
          dbb[j] = static_cast<T>(d * inv_m);
        });
      }
    });
  });
  auto dq = (w1.view({1, Ck, 1}) * da.unsqueeze(1)).contiguous();
  auto dk = (w2.view({1, Ck, 1}) * db.unsqueeze(1)).contiguous();
  auto dw = at::cat({(q * da.unsqueeze(1)).sum({0, 2}), (k * db.unsqueeze(1)).sum({0, 2})});
  return {dq, dk, dvt.transpose(1, 2).contiguous(), dw};
}

}  // namespace sweep

struct CpuConcatRows {
  static constexpr bool kSweep = true;
  static at::Tensor sweep_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w) {
    return sweep::forward(q, k, v, w);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sweep_backward(const at::Tensor& gout,
                                                                                   const at::Tensor& q,
                                                                                   const at::Tensor& k,
                                                                                   const at::Tensor& v,
                                                                                   const at::Tensor& w) {
    return sweep::backward(gout, q, k, v, w);
  }

  // f[i, j] = ReLU(a_i + b_j) / M: [N, T]
  static at::Tensor forward(const at::Tensor& a, const at::Tensor& b, double inv_m) {
    const int64_t N = a.size(0), T = b.size(0);
    auto f = at::empty({N, T}, a.options());
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "nl concat forward (cpu)", [&] {
      const scalar_t* ap = a.data_ptr<scalar_t>();
      const scalar_t* bp = b.data_ptr<scalar_t>();
      scalar_t* fp = f.data_ptr<scalar_t>();
      const scalar_t im = static_cast<scalar_t>(inv_m);
      at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(T, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t j = 0; j < T; ++j) fp[i * T + j] = concat_weight<scalar_t>(ap[i], bp[j], im);
      });
    });
    return f;
  }
  // df[i, j] <- ReLU'(a_i + b_j) · df[i, j] / M (in place)
  static void backward(const at::Tensor& a, const at::Tensor& b, const at::Tensor& df, double inv_m) {
    const int64_t N = a.size(0), T = b.size(0);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "nl concat backward (cpu)", [&] {
      const scalar_t* ap = a.data_ptr<scalar_t>();
      const scalar_t* bp = b.data_ptr<scalar_t>();
      scalar_t* dp = df.data_ptr<scalar_t>();
      const scalar_t im = static_cast<scalar_t>(inv_m);
      at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(T, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t j = 0; j < T; ++j) dp[i * T + j] = concat_weight_grad<scalar_t>(ap[i], bp[j], dp[i * T + j], im);
      });
    });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> nl_forward_cpu(const at::Tensor& theta, const at::Tensor& phi,
                                                              const at::Tensor& g, const c10::optional<at::Tensor>& w,
                                                              c10::string_view mode, double scale, int64_t key_block,
                                                              bool save_scores) {
  TORCH_CHECK(theta.scalar_type() == at::kFloat || theta.scalar_type() == at::kDouble,
              "nl_forward (cpu): theta must be float32 or float64, got ", theta.scalar_type());
  return nl_forward<attnbench_tiles::CpuRows, CpuConcatRows>(theta, phi, g, w, std::string(mode), scale, key_block,
                                                             save_scores);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nl_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
    const c10::optional<at::Tensor>& w, const at::Tensor& out, const at::Tensor& stats, c10::string_view mode,
    double scale, int64_t key_block, const c10::optional<at::Tensor>& scores) {
  TORCH_CHECK(theta.scalar_type() == at::kFloat || theta.scalar_type() == at::kDouble,
              "nl_backward (cpu): theta must be float32 or float64, got ", theta.scalar_type());
  return nl_backward<attnbench_tiles::CpuRows, CpuConcatRows>(grad_out, theta, phi, g, w, out, stats,
                                                              std::string(mode), scale, key_block, scores);
}

}  // namespace attnbench_nl

TORCH_LIBRARY(attnbench_non_local, m) {
  m.def(
      "nl_forward(Tensor theta, Tensor phi, Tensor g, Tensor? w, str mode, float scale, int key_block, "
      "bool save_scores=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "nl_backward(Tensor grad_out, Tensor theta, Tensor phi, Tensor g, Tensor? w, Tensor out, Tensor stats, "
      "str mode, float scale, int key_block, Tensor? scores=None) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(attnbench_non_local, CPU, m) {
  m.impl("nl_forward", &attnbench_nl::nl_forward_cpu);
  m.impl("nl_backward", &attnbench_nl::nl_backward_cpu);
}
