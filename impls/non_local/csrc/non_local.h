// Non-local block: per-element math written once for CPU and CUDA (no ATen).
// The softmax modes use softmax_math.h (online softmax, flash-style backward).
#pragma once

#include "softmax_math.h"

namespace attnbench_nl {

// concat: f_ij = ReLU(a_i + b_j) / M with a_i = w[:Ck]·θ_i, b_j = w[Ck:]·φ_j.
template <typename acc_t>
HOST_DEVICE inline acc_t concat_weight(acc_t a, acc_t b, acc_t inv_m) {
  const acc_t pre = a + b;
  return pre > acc_t(0) ? pre * inv_m : acc_t(0);
}

// d f_ij / d(a_i + b_j) times the upstream gradient (ReLU'(0) = 0, as torch.relu).
template <typename acc_t>
HOST_DEVICE inline acc_t concat_weight_grad(acc_t a, acc_t b, acc_t dweight, acc_t inv_m) {
  return a + b > acc_t(0) ? dweight * inv_m : acc_t(0);
}

}  // namespace attnbench_nl
