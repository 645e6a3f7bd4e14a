// Vectorized row math for the CPU kernels: exp, max and sum over a row of
// scores, written with GCC/Clang vector extensions (`vector_size(32)`: one AVX
// register with -march=native on x86-64; GCC splits it into narrower registers
// elsewhere). CPU only: the whole header is empty under nvcc, so a .cu file may
// include it without effect. Used by impls/mhsa (flash tiles); meant for the
// softmax tiles of softmax_math.h as well.
//
//   exp_v(x)                 8 floats at once, Cephes expf: ≤ 2 ulp for x in
//                            [−87.33, 88]; x < −87.33 (incl. −inf) gives exactly 0
//                            (results below FLT_MIN are flushed), x > 88 gives exp(88)
//   row_max(x, n)            max_j x[j] (−inf for n = 0)
//   exp_affine(x, n, a, b)   x[j] ← exp(a·x[j] − b) in place, returns Σ_j x[j]
//
// double: the same interface with std::exp per element (no vector exp).
#pragma once

#if !defined(__CUDACC__)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace attnbench_vec {

typedef float vfloat __attribute__((vector_size(32)));
typedef int32_t vint __attribute__((vector_size(32)));
constexpr int64_t kFloatLanes = 32 / sizeof(float);

inline vfloat splat(float x) { return vfloat{} + x; }

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }

// The first n < kFloatLanes entries of p, the other lanes set to fill.
inline vfloat load_part(const float* p, int64_t n, float fill) {
  float buf[kFloatLanes];
  for (int64_t i = 0; i < kFloatLanes; ++i) buf[i] = i < n ? p[i] : fill;
  return load(buf);
}

inline void store_part(float* p, vfloat v, int64_t n) {
  float buf[kFloatLanes];
  store(buf, v);
  for (int64_t i = 0; i < n; ++i) p[i] = buf[i];
}

// exp of every lane (Cephes expf: range reduction x = n·ln2 + r with ln 2 split in
// two, degree-5 polynomial for exp(r), 2^n from the exponent bits).
inline vfloat exp_v(vfloat x) {
  const vfloat lo = splat(-87.3365479f);  // ≈ ln(FLT_MIN): 2^n stays a normal number
  const vint under = x < lo;
  x = x < lo ? lo : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  // Round x·log2(e) to the nearest integer (|x·log2 e| < 2^22, so adding and
  // subtracting 1.5·2^23 rounds to nearest even).
  const vfloat magic = splat(12582912.0f);
  const vfloat n = (x * splat(1.44269504088896341f) + magic) - magic;
  vfloat r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vfloat p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const vfloat y = p * two_n;
  return under ? vfloat{} : y;
}

inline float hmax(vfloat v) {
  float buf[kFloatLanes];
  store(buf, v);
  float m = buf[0];
  for (int64_t i = 1; i < kFloatLanes; ++i) m = buf[i] > m ? buf[i] : m;
  return m;
}

inline float hsum(vfloat v) {
  float buf[kFloatLanes];
  store(buf, v);
  // Pairwise, so the result does not depend on the compiler's choice of order.
  return ((buf[0] + buf[4]) + (buf[2] + buf[6])) + ((buf[1] + buf[5]) + (buf[3] + buf[7]));
}

inline float row_max(const float* x, int64_t n) {
  vfloat m0 = splat(-std::numeric_limits<float>::infinity()), m1 = m0;
  int64_t j = 0;
  for (; j + 2 * kFloatLanes <= n; j += 2 * kFloatLanes) {
    const vfloat a = load(x + j), b = load(x + j + kFloatLanes);
    m0 = a > m0 ? a : m0;
    m1 = b > m1 ? b : m1;
  }
  for (; j + kFloatLanes <= n; j += kFloatLanes) {
    const vfloat a = load(x + j);
    m0 = a > m0 ? a : m0;
  }
  if (j < n) {
    const vfloat a = load_part(x + j, n - j, -std::numeric_limits<float>::infinity());
    m1 = a > m1 ? a : m1;
  }
  return hmax(m0 > m1 ? m0 : m1);
}

inline float exp_affine(float* x, int64_t n, float a, float b) {
  const vfloat va = splat(a), vb = splat(b);
  vfloat s0 = {}, s1 = {};
  int64_t j = 0;
  for (; j + 2 * kFloatLanes <= n; j += 2 * kFloatLanes) {
    const vfloat e0 = exp_v(va * load(x + j) - vb);
    const vfloat e1 = exp_v(va * load(x + j + kFloatLanes) - vb);
    store(x + j, e0);
    store(x + j + kFloatLanes, e1);
    s0 += e0;
    s1 += e1;
  }
  for (; j + kFloatLanes <= n; j += kFloatLanes) {
    const vfloat e = exp_v(va * load(x + j) - vb);
    store(x + j, e);
    s0 += e;
  }
  if (j < n) {
    const vfloat e = exp_v(va * load_part(x + j, n - j, 0.0f) - vb);
    store_part(x + j, e, n - j);
    float buf[kFloatLanes];
    store(buf, e);
    for (int64_t i = n - j; i < kFloatLanes; ++i) buf[i] = 0.0f;  // lanes past the row
    s1 += load(buf);
  }
  return hsum(s0 + s1);
}

// double: scalar std::exp, same interface.
inline double row_max(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

inline double exp_affine(double* x, int64_t n, double a, double b) {
  double s = 0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(a * x[j] - b);
    s += x[j];
  }
  return s;
}

}  // namespace attnbench_vec

#endif  // !defined(__CUDACC__)
