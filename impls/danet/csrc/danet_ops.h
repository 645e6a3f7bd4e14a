// Device-generic drivers of the DANet ops: ATen matmuls + the Rows policies' kernels.
// Included by danet.cpp (CPU rows) and danet_cuda.cu (CUDA rows).
//
//   PAM: softmax_tiles.h with scale 1 (online softmax over key tiles, lse saved).
//   CAM: E = X Xᵀ and out = A X as batched matmuls; A [B, C, C] is small and saved.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

#include "danet.h"
#include "softmax_tiles.h"

namespace attnbench_danet {

inline at::Tensor flat(const at::Tensor& t) {
  return t.reshape({t.size(0), t.size(1), -1}).to(attnbench_tiles::acc_type_of(t.scalar_type())).contiguous();
}

inline void check_pam(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4, op, ": q must have shape [B, Cq, H, W], got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes(), op, ": k must have q's shape ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(v.dim() == 4 && v.size(0) == q.size(0) && v.size(2) == q.size(2) && v.size(3) == q.size(3), op,
              ": v must have shape [B, C, H, W] = [", q.size(0), ", C, ", q.size(2), ", ", q.size(3), "], got ",
              v.sizes());
  for (const auto* t : {&k, &v}) {
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), op, ": q, k and v must share a dtype, got ", q.scalar_type(),
                " and ", t->scalar_type());
    TORCH_CHECK(t->device() == q.device(), op, ": q, k and v must be on one device, got ", q.device(), " and ",
                t->device());
  }
}

inline bool is_paper(const char* op, const std::string& sign) {
  TORCH_CHECK(sign == "code" || sign == "paper", op, ": sign must be 'code' or 'paper', got '", sign, "'");
  return sign == "paper";
}

template <class Rows>
std::tuple<at::Tensor, at::Tensor> pam_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               int64_t key_block) {
  check_pam("pam_forward", q, k, v);
  at::Tensor out, lse;
  std::tie(out, lse) = attnbench_tiles::softmax_attention_forward<Rows>(flat(q), flat(k), flat(v), 1.0, key_block);
  return {out.view(v.sizes()).to(v.scalar_type()), lse};
}

template <class Rows>
std::tuple<at::Tensor, at::Tensor, at::Tensor> pam_backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                            const at::Tensor& k, const at::Tensor& v,
                                                            const at::Tensor& out, const at::Tensor& lse,
                                                            int64_t key_block) {
  check_pam("pam_backward", q, k, v);
  TORCH_CHECK(grad_out.sizes() == v.sizes() && out.sizes() == v.sizes(),
              "pam_backward: grad_out and out must have v's shape ", v.sizes(), ", got ", grad_out.sizes(), " and ",
              out.sizes());
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == q.size(0) && lse.size(1) == q.size(2) * q.size(3),
              "pam_backward: lse must have shape [B, H*W], got ", lse.sizes());
  const auto qf = flat(q);
  at::Tensor dq, dk, dv;
  std::tie(dq, dk, dv) = attnbench_tiles::softmax_attention_backward<Rows>(
      flat(grad_out), qf, flat(k), flat(v), flat(out), lse.to(qf.scalar_type()).contiguous(), 1.0, key_block);
  return {dq.view(q.sizes()).to(q.scalar_type()), dk.view(k.sizes()).to(k.scalar_type()),
          dv.view(v.sizes()).to(v.scalar_type())};
}

inline void check_cam(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.size(1) > 0, op, ": x must have at least one channel, got ", x.sizes());
}

// (out [B, C, H, W], attn [B, C, C] in the compute dtype)
template <class CamRows>
std::tuple<at::Tensor, at::Tensor> cam_forward(const at::Tensor& x, const std::string& sign) {
  check_cam("cam_forward", x);
  const bool paper = is_paper("cam_forward", sign);
  const auto X = flat(x);                       // [B, C, N]
  auto attn = at::bmm(X, X.transpose(1, 2));    // E [B, C, C], overwritten by A
  CamRows::softmax(attn, paper);
  auto out = at::bmm(attn, X);
  return {out.view(x.sizes()).to(x.scalar_type()), attn};
}

template <class CamRows>
at::Tensor cam_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& attn,
                        const std::string& sign) {
  check_cam("cam_backward", x);
  const bool paper = is_paper("cam_backward", sign);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "cam_backward: grad_out must have x's shape ", x.sizes(), ", got ",
              grad_out.sizes());
  TORCH_CHECK(attn.dim() == 3 && attn.size(0) == x.size(0) && attn.size(1) == x.size(1) && attn.size(2) == x.size(1),
              "cam_backward: attn must have shape [B, C, C], got ", attn.sizes());
  const auto X = flat(x), gout = flat(grad_out);
  const auto A = attn.to(X.scalar_type()).contiguous();
  auto dE = at::bmm(gout, X.transpose(1, 2));  // dA [B, C, C], overwritten by dE
  CamRows::backward(A, dE, paper);
  auto dX = at::bmm(dE + dE.transpose(1, 2), X).add_(at::bmm(A.transpose(1, 2), gout));
  return dX.view(x.sizes()).to(x.scalar_type());
}

}  // namespace attnbench_danet
