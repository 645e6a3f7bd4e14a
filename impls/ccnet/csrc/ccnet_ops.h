// Input validation shared by the CPU (ccnet.cpp) and CUDA (ccnet_cuda.cu) kernels.
// Messages name the op, the argument and what was expected (shared/STYLE.md).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace attnbench_ccnet {

inline std::string op_name(const char* op) { return std::string("attnbench_ccnet::") + op; }

/// x must be a 4-D floating tensor [B, *, H, W] with every size >= 1.
inline void check_4d(const char* op, const at::Tensor& x, const char* name, const char* layout) {
  TORCH_CHECK(x.dim() == 4, op_name(op), ": ", name, " must be 4-D ", layout, ", got ", x.sizes());
  for (int64_t d = 0; d < 4; ++d) {
    TORCH_CHECK(x.size(d) >= 1, op_name(op), ": ", name, " must have every size >= 1 ", layout, ", got ", x.sizes());
  }
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op_name(op), ": ", name, " must be a floating tensor, got ",
              x.scalar_type());
}

/// other must match ref's dtype and device (ref is the op's first tensor argument).
inline void check_like(const char* op, const at::Tensor& other, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(other.scalar_type() == ref.scalar_type(), op_name(op), ": ", name, " must have dtype ",
              ref.scalar_type(), " like ", ref_name, ", got ", other.scalar_type());
  TORCH_CHECK(other.device() == ref.device(), op_name(op), ": ", name, " must be on ", ref.device(), " like ",
              ref_name, ", got ", other.device());
}

/// other must have exactly the given sizes (described as `layout`, derived from ref_name).
inline void check_shape(const char* op, const at::Tensor& other, const char* name, at::IntArrayRef expected,
                        const char* layout, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(other.sizes() == expected, op_name(op), ": ", name, " must be ", layout, " = ", expected, " like ",
              ref_name, " ", ref.sizes(), ", got ", other.sizes());
}

/// q, k: [B, Cq, H, W].
inline void check_qk(const char* op, const at::Tensor& q, const at::Tensor& k) {
  check_4d(op, q, "q", "[B, Cq, H, W]");
  check_4d(op, k, "k", "[B, Cq, H, W]");
  check_like(op, k, "k", q, "q");
  check_shape(op, k, "k", q.sizes(), "[B, Cq, H, W]", q, "q");
}

/// attn: [B, H+W-1, H, W] for v: [B, C, H, W].
inline void check_attn_v(const char* op, const at::Tensor& attn, const char* attn_name, const at::Tensor& v) {
  check_4d(op, v, "v", "[B, C, H, W]");
  check_4d(op, attn, attn_name, "[B, H+W-1, H, W]");
  check_like(op, attn, attn_name, v, "v");
  const int64_t H = v.size(2), W = v.size(3);
  check_shape(op, attn, attn_name, {v.size(0), H + W - 1, H, W}, "[B, H+W-1, H, W]", v, "v");
}

/// The kernels take contiguous buffers: a non-contiguous view is copied, never misread.
inline at::Tensor dense(const at::Tensor& x) { return x.contiguous(); }

}  // namespace attnbench_ccnet
