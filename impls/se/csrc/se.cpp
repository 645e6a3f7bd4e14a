// Squeeze-and-Excitation: op schemas and CPU kernels (two sweeps over x per pass).
//
// Forward: pool every (b, c) plane, run the tiny MLP per b, scale every plane.
// Backward: ds = Σ g·x per plane, the MLP transposes per b, dx = g·s + dz/HW per
// plane, then the weight gradients summed over b. `two_sweeps` orders the work so
// the second sweep re-reads x (or g) from cache: per batch element and thread when
// its planes fit in L2, else per group of batch elements that fits in a quarter of
// L3. A wide MLP (C·Cr ≥ 4096) runs as GEMMs over a group's rows. Plane sums are
// blocked float lanes added in double (impls/_common/csrc/wide_sum.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "se.h"
#include "wide_sum.h"
#include "wide_sum.h"

namespace attnbench_se {
namespace {

constexpr int64_t kL2Bytes = int64_t(1) << 19;     // per-thread working set for the fused path
// First-sweep bytes per batch group: small enough that the second sweep still finds
// them in cache (L2 + this VM's share of L3). At B=8, C=256, 56x56, groups of 8 MiB
// ran at 0.97x vectorized, of 2 MiB at 1.14x.
constexpr int64_t kGroupBytes = int64_t(2) << 20;
constexpr int64_t kBlasMlpMacs = 4096;             // C·Cr from which the MLP runs as GEMMs

int64_t plane_grain(int64_t hw) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(hw, 1)); }

void check_weights(const char* op, const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                   const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), op, ": x must be floating point, got ", x.scalar_type());
  const int64_t C = x.size(1);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C, op, ": w1 must have shape [Cr, C] with C = ", C, ", got ", w1.sizes());
  const int64_t Cr = w1.size(0);
  TORCH_CHECK(Cr >= 1, op, ": the reduction leaves Cr = ", Cr, " hidden units for C = ", C,
              " (r > C); SE needs Cr >= 1");
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == Cr, op, ": w2 must have shape [C, Cr] = [", C, ", ",
              Cr, "], got ", w2.sizes());
  for (const auto* t : {&w1, &w2}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": weights must have x's dtype ", x.scalar_type(), ", got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), op, ": weights must be on x's device ", x.device(), ", got ", t->device());
  }
  if (b1.has_value()) {
    TORCH_CHECK(b1->dim() == 1 && b1->size(0) == Cr, op, ": b1 must have shape [Cr] = [", Cr, "], got ", b1->sizes());
    TORCH_CHECK(b1->scalar_type() == x.scalar_type() && b1->device() == x.device(), op,
                ": b1 must have x's dtype and device");
  }
  if (b2.has_value()) {
    TORCH_CHECK(b2->dim() == 1 && b2->size(0) == C, op, ": b2 must have shape [C] = [", C, "], got ", b2->sizes());
    TORCH_CHECK(b2->scalar_type() == x.scalar_type() && b2->device() == x.device(), op,
                ": b2 must have x's dtype and device");
  }
}

at::ScalarType stats_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <typename scalar_t>
struct Forward {
  using acc_t = acc_type_t<scalar_t>;
  const scalar_t* x;
  const scalar_t* w1;
  const scalar_t* b1;
  const scalar_t* w2;
  const scalar_t* b2;
  scalar_t* out;
  acc_t* z;
  acc_t* u;
  acc_t* s;
  int64_t C, Cr, HW;

  void pool(int64_t p0, int64_t p1) const {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* xp = x + p * HW;
      // double: a plane of 112x112 summed in float drifted 3-12x past the vectorized
      // impl's error (torch's cascade sum); the sweep is memory-bound, so it costs nothing
      z[p] = acc_t(attnbench_common::wide_sum(xp, HW) / double(HW));
    }
  }
  void mlp(int64_t b) const {
    for (int64_t r = 0; r < Cr; ++r) u[b * Cr + r] = hidden_unit<scalar_t, acc_t>(w1 + r * C, b1, z + b * C, C, r);
    for (int64_t c = 0; c < C; ++c) s[b * C + c] = gate<scalar_t, acc_t>(w2 + c * Cr, b2, u + b * Cr, Cr, c);
  }
  void scale(int64_t p0, int64_t p1) const {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* xp = x + p * HW;
      scalar_t* op = out + p * HW;
      const acc_t sp = s[p];
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) op[i] = scalar_t(acc_t(xp[i]) * sp);
    }
  }
};

template <typename scalar_t>
struct Backward {
  using acc_t = acc_type_t<scalar_t>;
  const scalar_t* g;
  const scalar_t* x;
  const scalar_t* w1;
  const scalar_t* w2;
  const acc_t* z;
  const acc_t* u;
  const acc_t* s;
  scalar_t* dx;
  acc_t* dp2;  // [B, C]
  acc_t* dp1;  // [B, Cr]
  acc_t* dz;   // [B, C]
  int64_t C, Cr, HW;

  void gate_grad(int64_t p0, int64_t p1) const {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* gp = g + p * HW;
      const scalar_t* xp = x + p * HW;
      // double for the same reason as the pooling sum
      dp2[p] = gate_pre_grad(acc_t(attnbench_common::wide_dot(gp, xp, HW)), s[p]);
    }
  }
  void mlp(int64_t b) const {
    for (int64_t r = 0; r < Cr; ++r) dp1[b * Cr + r] = hidden_pre_grad(w2, dp2 + b * C, u[b * Cr + r], C, Cr, r);
    for (int64_t c = 0; c < C; ++c) dz[b * C + c] = pooled_grad(w1, dp1 + b * Cr, C, Cr, c);
  }
  void input_grads(int64_t p0, int64_t p1) const {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* gp = g + p * HW;
      scalar_t* dxp = dx + p * HW;
      const acc_t sp = s[p];
      const acc_t spread = dz[p] / acc_t(HW);
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) dxp[i] = scalar_t(input_grad(acc_t(gp[i]), sp, spread));
    }
  }
};

// Runs phase A over planes, the MLP step, phase B over planes (the second sweep
// re-reads what the first read).
//  - fused: one batch element per thread at a time when its planes fit in L2 (the
//    second sweep reads from L2); not for a wide MLP on small planes, where the
//    per-element dot products would cost more than the sweeps (16·Cr > HW).
//  - otherwise in groups of batch elements whose first-sweep bytes fit in
//    kGroupBytes, each group as three steps: A over its planes in parallel, the MLP for its
//    rows (`mlp_rows(b0, b1)`: GEMMs or per-element), B over its planes. Whole-tensor
//    sweeps re-read x from DRAM once it outgrows L3 (0.92x vectorized at B=8, C=256,
//    56x56); per group the second sweep hits L3.
template <typename A, typename M, typename R, typename Bf>
void two_sweeps(int64_t B, int64_t C, int64_t HW, int64_t Cr, int64_t plane_bytes, bool wide, const A& sweep_a,
                const M& per_b, const R& mlp_rows, const Bf& sweep_b) {
  const bool fused =
      B >= at::get_num_threads() && C * plane_bytes <= kL2Bytes && (!wide || 16 * Cr <= HW);
  if (fused) {
    // grain: small problems run inline (waking the thread pool costs more than they do)
    at::parallel_for(0, B, std::max<int64_t>(1, 32768 / std::max<int64_t>(C * HW, 1)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        sweep_a(b * C, (b + 1) * C);
        per_b(b);
        sweep_b(b * C, (b + 1) * C);
      }
    });
    return;
  }
  const int64_t grain = plane_grain(HW);
  // A wide MLP on small planes costs more than the sweeps: one GEMM over the whole
  // batch (small-row GEMMs also summed C = 2048 terms less accurately, 3x vectorized).
  const int64_t group = wide && 16 * Cr > HW
                            ? B
                            : std::clamp<int64_t>(kGroupBytes / std::max<int64_t>(C * plane_bytes, 1), 1, B);
  for (int64_t g0 = 0; g0 < B; g0 += group) {
    const int64_t g1 = std::min(B, g0 + group);
    at::parallel_for(g0 * C, g1 * C, grain, [&](int64_t p0, int64_t p1) { sweep_a(p0, p1); });
    mlp_rows(g0, g1);
    at::parallel_for(g0 * C, g1 * C, grain, [&](int64_t p0, int64_t p1) { sweep_b(p0, p1); });
  }
}

// The MLP step for batch rows [b0, b1): per-element dot products, in parallel.
template <typename M>
void per_b_rows(int64_t b0, int64_t b1, int64_t C, int64_t HW, const M& per_b) {
  at::parallel_for(b0, b1, std::max<int64_t>(1, 32768 / std::max<int64_t>(C * HW, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t b = r0; b < r1; ++b) per_b(b);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_forward_cpu(const at::Tensor& x_, const at::Tensor& w1_,
                                                                          const std::optional<at::Tensor>& b1_,
                                                                          const at::Tensor& w2_,
                                                                          const std::optional<at::Tensor>& b2_) {
  check_weights("se_forward", x_, w1_, b1_, w2_, b2_);
  TORCH_CHECK(x_.device().is_cpu(), "se_forward: CPU kernel got x on ", x_.device());
  const at::Tensor x = x_.contiguous(), w1 = w1_.contiguous(), w2 = w2_.contiguous();
  const at::Tensor b1 = b1_.has_value() ? b1_->contiguous() : at::Tensor();
  const at::Tensor b2 = b2_.has_value() ? b2_->contiguous() : at::Tensor();
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), Cr = w1.size(0);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto st = x.options().dtype(stats_type(x.scalar_type()));
  at::Tensor z = at::empty({B, C}, st), u = at::empty({B, Cr}, st), s = at::empty({B, C}, st);
  TORCH_CHECK(HW > 0, "se_forward: x must have H·W > 0, got ", x.sizes());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "se_forward", [&] {
    using acc_t = acc_type_t<scalar_t>;
    Forward<scalar_t> f{x.data_ptr<scalar_t>(),
                        w1.data_ptr<scalar_t>(),
                        b1.defined() ? b1.data_ptr<scalar_t>() : nullptr,
                        w2.data_ptr<scalar_t>(),
                        b2.defined() ? b2.data_ptr<scalar_t>() : nullptr,
                        out.data_ptr<scalar_t>(),
                        z.data_ptr<acc_t>(),
                        u.data_ptr<acc_t>(),
                        s.data_ptr<acc_t>(),
                        C,
                        Cr,
                        HW};
    // A wide MLP (C·Cr ≥ kBlasMlpMacs MACs per batch element) runs as GEMMs over a
    // group's rows: as per-element dot products it cost more than the sweeps (0.4x
    // vectorized at B=32, C=256, Cr=64, 7x7).
    const bool wide = C * Cr >= kBlasMlpMacs;
    const auto mlp_rows = [&](int64_t r0, int64_t r1) {
      if (!wide) return per_b_rows(r0, r1, C, HW, [&](int64_t b) { f.mlp(b); });
      auto zr = z.narrow(0, r0, r1 - r0), ur = u.narrow(0, r0, r1 - r0), sr = s.narrow(0, r0, r1 - r0);
      if (b1.defined()) {
        at::addmm_out(ur, b1, zr, w1.t());
      } else {
        at::mm_out(ur, zr, w1.t());
      }
      ur.relu_();
      if (b2.defined()) {
        at::addmm_out(sr, b2, ur, w2.t());
      } else {
        at::mm_out(sr, ur, w2.t());
      }
      sr.sigmoid_();
    };
    two_sweeps(
        B, C, HW, Cr, HW * int64_t(sizeof(scalar_t)), wide, [&](int64_t p0, int64_t p1) { f.pool(p0, p1); },
        [&](int64_t b) { f.mlp(b); }, mlp_rows, [&](int64_t p0, int64_t p1) { f.scale(p0, p1); });
  });
  return {out, z, u, s};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& x_, const at::Tensor& w1_, const at::Tensor& w2_,
    const at::Tensor& z_, const at::Tensor& u_, const at::Tensor& s_) {
  check_weights("se_backward", x_, w1_, std::nullopt, w2_, std::nullopt);
  TORCH_CHECK(x_.device().is_cpu(), "se_backward: CPU kernel got x on ", x_.device());
  TORCH_CHECK(grad_out_.sizes() == x_.sizes(), "se_backward: grad_out must have x's shape ", x_.sizes(), ", got ",
              grad_out_.sizes());
  TORCH_CHECK(grad_out_.scalar_type() == x_.scalar_type(), "se_backward: grad_out must have dtype ",
              x_.scalar_type(), ", got ", grad_out_.scalar_type());
  const int64_t B = x_.size(0), C = x_.size(1), HW = x_.size(2) * x_.size(3), Cr = w1_.size(0);
  const auto stype = stats_type(x_.scalar_type());
  const std::vector<std::pair<const at::Tensor*, std::vector<int64_t>>> stats = {
      {&z_, {B, C}}, {&u_, {B, Cr}}, {&s_, {B, C}}};
  for (const auto& [t, shape] : stats) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef(shape) && t->scalar_type() == stype, "se_backward: saved z/u/s must be ",
                stype, " of shape ", at::IntArrayRef(shape), ", got ", t->scalar_type(), " ", t->sizes());
  }
  const at::Tensor g = grad_out_.contiguous(), x = x_.contiguous(), w1 = w1_.contiguous(), w2 = w2_.contiguous();
  const at::Tensor z = z_.contiguous(), u = u_.contiguous(), s = s_.contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor dw1 = at::empty_like(w1, at::MemoryFormat::Contiguous), db1 = at::empty({Cr}, w1.options());
  at::Tensor dw2 = at::empty_like(w2, at::MemoryFormat::Contiguous), db2 = at::empty({C}, w1.options());
  const auto st = x.options().dtype(stype);
  at::Tensor dp2 = at::empty({B, C}, st), dp1 = at::empty({B, Cr}, st), dz = at::empty({B, C}, st);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "se_backward", [&] {
    using acc_t = acc_type_t<scalar_t>;
    Backward<scalar_t> k{g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w1.data_ptr<scalar_t>(),
                         w2.data_ptr<scalar_t>(), z.data_ptr<acc_t>(), u.data_ptr<acc_t>(),
                         s.data_ptr<acc_t>(),     dx.data_ptr<scalar_t>(), dp2.data_ptr<acc_t>(),
                         dp1.data_ptr<acc_t>(),   dz.data_ptr<acc_t>(),  C,
                         Cr,                      HW};
    const bool wide = C * Cr >= kBlasMlpMacs;  // the forward's GEMM rows, transposed
    const auto mlp_rows = [&](int64_t r0, int64_t r1) {
      if (!wide) return per_b_rows(r0, r1, C, HW, [&](int64_t b) { k.mlp(b); });
      auto p2 = dp2.narrow(0, r0, r1 - r0), p1 = dp1.narrow(0, r0, r1 - r0), zr = dz.narrow(0, r0, r1 - r0);
      at::mm_out(p1, p2, w2);  // dp1 = (dp2 · w2) ⊙ [u > 0]
      p1.mul_(u.narrow(0, r0, r1 - r0).gt(0));
      at::mm_out(zr, p1, w1);
    };
    two_sweeps(
        B, C, HW, Cr, 2 * HW * int64_t(sizeof(scalar_t)), wide, [&](int64_t p0, int64_t p1) { k.gate_grad(p0, p1); },
        [&](int64_t b) { k.mlp(b); }, mlp_rows, [&](int64_t p0, int64_t p1) { k.input_grads(p0, p1); });
    if (wide) {
      at::mm_out(dw2, dp2.t(), u);
      at::mm_out(dw1, dp1.t(), z);
      at::sum_out(db2, dp2, 0);
      at::sum_out(db1, dp1, 0);
      return;
    }
    // weight gradients: sums over the batch of outer products (B·C·Cr, small)
    const acc_t* P2 = dp2.data_ptr<acc_t>();
    const acc_t* P1 = dp1.data_ptr<acc_t>();
    const acc_t* Z = z.data_ptr<acc_t>();
    const acc_t* U = u.data_ptr<acc_t>();
    scalar_t* DW1 = dw1.data_ptr<scalar_t>();
    scalar_t* DW2 = dw2.data_ptr<scalar_t>();
    scalar_t* DB1 = db1.data_ptr<scalar_t>();
    scalar_t* DB2 = db2.data_ptr<scalar_t>();
    at::parallel_for(0, C, std::max<int64_t>(16, 32768 / std::max<int64_t>(B * Cr, 1)), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double bias = 0;  // double sums, as in se.h
        for (int64_t b = 0; b < B; ++b) bias += P2[b * C + c];
        DB2[c] = scalar_t(bias);
        for (int64_t r = 0; r < Cr; ++r) {
          double w2g = 0, w1g = 0;
          for (int64_t b = 0; b < B; ++b) {
            w2g += double(P2[b * C + c]) * double(U[b * Cr + r]);
            w1g += double(P1[b * Cr + r]) * double(Z[b * C + c]);
          }
          DW2[c * Cr + r] = scalar_t(w2g);
          DW1[r * C + c] = scalar_t(w1g);
        }
      }
    });
    for (int64_t r = 0; r < Cr; ++r) {
      double bias = 0;
      for (int64_t b = 0; b < B; ++b) bias += P1[b * Cr + r];
      DB1[r] = scalar_t(bias);
    }
  });
  return {dx, dw1, db1, dw2, db2};
}

}  // namespace

TORCH_LIBRARY(attnbench_se, m) {
  m.def("se_forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2) -> (Tensor out, Tensor z, Tensor u, Tensor s)");
  m.def(
      "se_backward(Tensor grad_out, Tensor x, Tensor w1, Tensor w2, Tensor z, Tensor u, Tensor s) -> (Tensor dx, "
      "Tensor dw1, Tensor db1, Tensor dw2, Tensor db2)");
}

TORCH_LIBRARY_IMPL(attnbench_se, CPU, m) {
  m.impl("se_forward", &se_forward_cpu);
  m.impl("se_backward", &se_backward_cpu);
}

}  // namespace attnbench_se
