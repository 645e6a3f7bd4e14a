// DANet channel attention (CAM): per-row math written once for CPU and CUDA (no ATen).
// PAM is plain softmax attention and uses softmax_math.h / softmax_tiles.h.
#pragma once

#include "softmax_math.h"

namespace attnbench_danet {

// One row of A from one row of E (n = C entries, in place):
//   code  (official):  A = softmax_j(rowmax − E)   (= softmax(−E))
//   paper:             A = softmax_j(E)
template <typename acc_t>
HOST_DEVICE inline void cam_row_softmax(acc_t* e, int64_t n, bool paper) {
  acc_t row_max = e[0];
  for (int64_t j = 1; j < n; ++j) row_max = e[j] > row_max ? e[j] : row_max;
  // logits: paper e − rowmax (≤ 0); code rowmax − e (≥ 0), whose max is rowmax − rowmin
  acc_t logit_max = 0;
  if (!paper) {
    acc_t row_min = e[0];
    for (int64_t j = 1; j < n; ++j) row_min = e[j] < row_min ? e[j] : row_min;
    logit_max = row_max - row_min;
  }
  acc_t sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t logit = paper ? e[j] - row_max : row_max - e[j];
    const acc_t p = attnbench_math::exp_of(logit - logit_max);
    e[j] = p;
    sum += p;
  }
  const acc_t inv = acc_t(1) / sum;
  for (int64_t j = 0; j < n; ++j) e[j] *= inv;
}

// Backward of one row: da (dL/dA) -> dL/dE in place. The softmax Jacobian gives
// dlogit_j = A_j (dA_j − Σ_k A_k dA_k); the logits are ±E plus a per-row shift
// (rowmax) whose gradient Σ_j dlogit_j is 0, so dE = ∓dlogit.
template <typename acc_t>
HOST_DEVICE inline void cam_row_backward(const acc_t* a, acc_t* da, int64_t n, bool paper) {
  acc_t dot = 0;
  for (int64_t j = 0; j < n; ++j) dot += a[j] * da[j];
  for (int64_t j = 0; j < n; ++j) {
    const acc_t dlogit = a[j] * (da[j] - dot);
    da[j] = paper ? dlogit : -dlogit;
  }
}

}  // namespace attnbench_danet
