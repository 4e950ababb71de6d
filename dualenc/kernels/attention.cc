// Fused attention forward (inference) for XLA:CPU: softmax(q k^T / sqrt(d)) v per (batch row,
// head), f32, AVX-512. XLA runs attention as separate passes over B x N x L x L scores (dot,
// max, exp, sum, divide, dot); here each head's scores stay in L2 and the two products are
// register-blocked FMA loops. Built and loaded by dualenc/models/kernels.py; see its docstring.
#include <immintrin.h>

#include <type_traits>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <vector>
#include <thread>

static inline __m512 exp512(__m512 x) {
  // exp(x) = 2^n * p(r), x = n ln2 + r, |r| <= ln2/2; degree-6 polynomial, rel err ~2e-7.
  const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.7f);
  x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// Key-mask bits of 16 keys from j0: bit t set when key j0 + t exists and is kept.
static inline __mmask16 bits16(const int32_t* keep, int j0, int Lk) {
  unsigned m = 0;
  for (int t = 0; t < 16 && j0 + t < Lk; ++t) m |= (keep[j0 + t] != 0) << t;
  return (__mmask16)m;
}

constexpr int RQ = 4, RK = 64, RO = 6;  // register blocks: S 4 x 64, O 6 x D
constexpr int QPAD = 12;                 // lcm(RQ, RO): query rows are padded to this

static inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// One (batch row, head): q, k, v point at token 0 of this head, token stride `ts` floats; out
// likewise. keep: (Lq or 1) x Lk flags (per_query: one row per query). Scratch, padded so every
// register block is full (compile-time sizes keep the accumulators in registers): qp Lqp x D,
// kt D x Lkp (K transposed, pre-scaled), vp Lk x D, S Lqp x Lkp, km (Lqp or 1) x Lkp / 16.
template <int D>
static void head(const float* q, const float* k, const float* v, const int32_t* keep,
                 bool per_query, float* out, int Lq, int Lk, int ts, float scale, float* qp,
                 float* S, float* kt, float* vp, __mmask16* km) {
  const int Lkp = round_up(Lk, RK), Lqp = round_up(Lq, QPAD), W = Lkp / 16;
  for (int i = 0; i < Lqp; ++i)
    for (int d = 0; d < D; ++d) qp[i * D + d] = i < Lq ? q[(size_t)i * ts + d] : 0.f;
  for (int j = 0; j < Lkp; ++j)
    for (int d = 0; d < D; ++d) kt[d * Lkp + j] = j < Lk ? k[(size_t)j * ts + d] * scale : 0.f;
  for (int j = 0; j < Lk; ++j) std::memcpy(vp + j * D, v + (size_t)j * ts, D * sizeof(float));
  const int rows = per_query ? Lqp : 1;
  for (int i = 0; i < rows; ++i)
    for (int w = 0; w < W; ++w)
      km[i * W + w] = i < Lq ? bits16(keep + (size_t)i * Lk, 16 * w, Lk) : (__mmask16)0;
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  // S = Q K^T (masked to -inf), in RQ x RK blocks
  for (int i0 = 0; i0 < Lqp; i0 += RQ) {
    for (int j0 = 0; j0 < Lkp; j0 += RK) {
      __m512 acc[RQ][RK / 16];
      for (int a = 0; a < RQ; ++a)
        for (int c = 0; c < RK / 16; ++c) acc[a][c] = _mm512_setzero_ps();
      for (int d = 0; d < D; ++d) {
        __m512 kv[RK / 16];
        for (int c = 0; c < RK / 16; ++c) kv[c] = _mm512_loadu_ps(kt + d * Lkp + j0 + 16 * c);
        for (int a = 0; a < RQ; ++a) {
          const __m512 qb = _mm512_set1_ps(qp[(i0 + a) * D + d]);
          for (int c = 0; c < RK / 16; ++c) acc[a][c] = _mm512_fmadd_ps(qb, kv[c], acc[a][c]);
        }
      }
      for (int a = 0; a < RQ; ++a) {
        const __mmask16* m = km + (per_query ? i0 + a : 0) * W + j0 / 16;
        for (int c = 0; c < RK / 16; ++c)
          _mm512_storeu_ps(S + (size_t)(i0 + a) * Lkp + j0 + 16 * c,
                           _mm512_mask_blend_ps(m[c], ninf, acc[a][c]));
      }
    }
  }
  // softmax over each row's kept keys
  for (int i = 0; i < Lq; ++i) {
    float* s = S + (size_t)i * Lkp;
    const __mmask16* m = km + (per_query ? i : 0) * W;
    __m512 mx = ninf;
    for (int j = 0; j < Lkp; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
    const float top = _mm512_reduce_max_ps(mx);
    if (top == -INFINITY) {  // no key: uniform over all Lk keys, as softmax of equal scores
      for (int j = 0; j < Lkp; ++j) s[j] = j < Lk ? 1.0f / Lk : 0.f;
      continue;
    }
    const __m512 mm = _mm512_set1_ps(top);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < Lkp; j += 16) {
      const __m512 e = _mm512_maskz_mov_ps(m[j / 16], exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), mm)));
      sum = _mm512_add_ps(sum, e);
      _mm512_storeu_ps(s + j, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int j = 0; j < Lkp; j += 16) _mm512_storeu_ps(s + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inv));
  }
  for (int i = Lq; i < Lqp; ++i) std::memset(S + (size_t)i * Lkp, 0, Lkp * sizeof(float));
  // O = P V, in RO x D blocks
  constexpr int C = D / 16;
  for (int i0 = 0; i0 < Lqp; i0 += RO) {
    __m512 acc[RO][C];
    for (int a = 0; a < RO; ++a)
      for (int c = 0; c < C; ++c) acc[a][c] = _mm512_setzero_ps();
    for (int j = 0; j < Lk; ++j) {
      __m512 vv[C];
      for (int c = 0; c < C; ++c) vv[c] = _mm512_loadu_ps(vp + j * D + 16 * c);
      for (int a = 0; a < RO; ++a) {
        const __m512 pb = _mm512_set1_ps(S[(size_t)(i0 + a) * Lkp + j]);
        for (int c = 0; c < C; ++c) acc[a][c] = _mm512_fmadd_ps(pb, vv[c], acc[a][c]);
      }
    }
    for (int a = 0; a < RO && i0 + a < Lq; ++a)
      for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + (size_t)(i0 + a) * ts + 16 * c, acc[a][c]);
  }
}

// q, k, v, out: (B, L, N, D) row-major; mask: (B, Mq, L) int32 with Mq = 1 (keys) or L.
static int attention_fwd(const float* q, const float* k, const float* v, const int32_t* mask,
                         bool per_query, float* out, int B, int L, int N, int D, int threads) {
  if (D != 16 && D != 32 && D != 64) return 1;
  const int ts = N * D;
  const float scale = 1.0f / std::sqrt((float)D);
  const int Lkp = round_up(L, RK), Lqp = round_up(L, QPAD);
  auto work = [&](int t) {
    std::vector<float> S((size_t)Lqp * Lkp), kt((size_t)D * Lkp), vp((size_t)L * D);
    std::vector<float> qp((size_t)Lqp * D);
    std::vector<__mmask16> km((size_t)(per_query ? Lqp : 1) * (Lkp / 16));
    for (int p = t; p < B * N; p += threads) {
      const int b = p / N, h = p % N;
      const size_t off = (size_t)b * L * ts + (size_t)h * D;
      const int32_t* keep = mask + (size_t)b * (per_query ? L : 1) * L;
      auto run = [&](auto dd) {
        head<decltype(dd)::value>(q + off, k + off, v + off, keep, per_query, out + off, L, L, ts,
                                  scale, qp.data(), S.data(), kt.data(), vp.data(), km.data());
      };
      if (D == 16) run(std::integral_constant<int, 16>());
      else if (D == 32) run(std::integral_constant<int, 32>());
      else run(std::integral_constant<int, 64>());
    }
  };
  threads = std::max(1, std::min(threads, B * N));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
  return 0;
}

static ffi::Error AttentionImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                                ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> mask,
                                ffi::ResultBuffer<ffi::F32> out, int32_t threads) {
  auto dims = q.dimensions();
  auto md = mask.dimensions();
  if (dims.size() != 4 || md.size() != 3)
    return ffi::Error::InvalidArgument("dualenc_attention: q (B, L, N, D), mask (B, 1|L, L)");
  const int B = dims[0], L = dims[1], N = dims[2], D = dims[3];
  if (attention_fwd(q.typed_data(), k.typed_data(), v.typed_data(), mask.typed_data(), md[1] != 1,
                    out->typed_data(), B, L, N, D, threads))
    return ffi::Error::InvalidArgument("dualenc_attention: head size must be 16, 32 or 64");
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DualencAttention, AttentionImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("threads"));

extern "C" int dualenc_attention_fwd(const float* q, const float* k, const float* v,
                                     const int32_t* mask, int per_query, float* out, int B, int L,
                                     int N, int D, int threads) {
  return attention_fwd(q, k, v, mask, per_query != 0, out, B, L, N, D, threads);
}
