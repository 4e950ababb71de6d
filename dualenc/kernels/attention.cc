// Fused attention for XLA:CPU, forward and backward: dropout(softmax(q k^T / sqrt(d))) v per
// (batch row, head), f32, AVX-512. XLA runs attention as separate passes over B x N x L x L
// scores (dot, max, exp, sum, divide, dot); here each head's scores stay in L2 and the products
// are register-blocked FMA loops. Built and loaded by dualenc/models/kernels.py; see its docstring.
#include <immintrin.h>

#include <optional>
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

// Dropout on the probabilities, bit-identical to dualenc/models/dropout.py: element (i, j) of
// head h of row b has index ((b N + h) Lk + j) Lq + i in the keys-major (B, N, Lk, Lq) tensor;
// kept when lowbias32(lowbias32(index ^ k0) + k1) >= thresh, then divided by keep = 1 - rate.
struct Drop {
  bool on = false;
  uint32_t k0 = 0, k1 = 0, thresh = 0, base = 0;
  float keep = 1.f;
};

static inline __m512i mix512(__m512i x) {
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x7FEB352Du));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x846CA68Bu));
  return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

// Keys [j0, j1) of row i of the probabilities: dropped-out entries to 0, kept ones / keep.
static inline void drop_row(float* s, int i, int Lq, int j0, int j1, const Drop& dr) {
  const __m512i lanes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                             12, 13, 14, 15),
                                           _mm512_set1_epi32(Lq));
  const __m512 keep = _mm512_set1_ps(dr.keep);
  for (int j = j0; j < j1; j += 16) {
    __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)(dr.base + (uint32_t)j * Lq + i)), lanes);
    __m512i h = mix512(_mm512_add_epi32(mix512(_mm512_xor_si512(idx, _mm512_set1_epi32((int)dr.k0))),
                                        _mm512_set1_epi32((int)dr.k1)));
    __mmask16 kept = _mm512_cmpge_epu32_mask(h, _mm512_set1_epi32((int)dr.thresh));
    _mm512_storeu_ps(s + j, _mm512_maskz_div_ps(kept, _mm512_loadu_ps(s + j), keep));
  }
}

constexpr int RQ = 4, RK = 64, RO = 6;  // register blocks: S 4 x 64, O 6 x D
constexpr int QPAD = 12;                 // lcm(RQ, RO): query rows are padded to this

static inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// What the query rows of one batch row see, shared by its heads. mask: key flags (KEYS, 1 x L),
// query x key flags (QUERY_KEYS, L x L) or segment ids (SEGMENTS, 1 x L: a query sees the keys
// with its own id, so padding (0) sees padding). km holds 16-key mask words, one row per query
// (or one for all with KEYS); lo/hi give each query row the words [lo, hi) that hold its kept
// keys, so the loops below skip keys a row cannot see (a packed row's other texts: attention
// then costs each text its own length, not the row's); a row with no kept key spans all words
// (uniform weights over all keys, as XLA's softmax of equal scores); rows >= Lq span none.
// rlo/rhi: per word, the query rows [rlo, rhi) whose spans cover it (the transposed products);
// za/zb: per query row, the words [za, zb) the products read of it (its own span, its RO block's
// and every word whose rows it lies between): only those need zeros outside its span.
enum MaskKind { KEYS = 0, QUERY_KEYS = 1, SEGMENTS = 2 };

struct Keys {
  int Lq = 0, Lqp = 0, Lk = 0, Lkp = 0, W = 0;
  bool per_query = false;
  std::vector<__mmask16> km;
  std::vector<int> lo, hi, rlo, rhi, za, zb;

  const __mmask16* row(int i) const { return km.data() + (size_t)(per_query ? i : 0) * W; }

  // The words [a, b) covering the spans of rows [i0, i1) (a >= b: none).
  void span(int i0, int i1, int& a, int& b) const {
    a = W, b = 0;
    for (int i = i0; i < i1 && i < Lq; ++i)
      if (lo[i] < hi[i]) a = std::min(a, lo[i]), b = std::max(b, hi[i]);
  }
};

static void build_keys(const int32_t* mask, MaskKind kind, int L, Keys& ks) {
  ks.Lq = ks.Lk = L;
  ks.Lqp = round_up(L, QPAD);
  ks.Lkp = round_up(L, RK);
  const int W = ks.W = ks.Lkp / 16;
  ks.per_query = kind != KEYS;
  const int rows = ks.per_query ? L : 1;
  ks.km.assign((size_t)(ks.per_query ? ks.Lqp : 1) * W, (__mmask16)0);
  for (int i = 0; i < rows; ++i)
    for (int w = 0; w < W && 16 * w < L; ++w) {
      const int j0 = 16 * w;
      if (kind == SEGMENTS) {
        const __mmask16 tail = (__mmask16)(L - j0 >= 16 ? 0xFFFF : (1u << (L - j0)) - 1);
        const __m512i ids = _mm512_maskz_loadu_epi32(tail, mask + j0);
        ks.km[(size_t)i * W + w] = _mm512_mask_cmpeq_epi32_mask(tail, ids, _mm512_set1_epi32(mask[i]));
      } else {
        ks.km[(size_t)i * W + w] = bits16(mask + (size_t)i * L, j0, L);
      }
    }
  ks.lo.assign(ks.Lqp, 0);
  ks.hi.assign(ks.Lqp, 0);
  for (int i = 0; i < L; ++i) {
    if (i > 0 && !ks.per_query) {
      ks.lo[i] = ks.lo[0], ks.hi[i] = ks.hi[0];
      continue;
    }
    const __mmask16* m = ks.row(i);
    int a = 0, b = W;
    while (a < W && m[a] == 0) ++a;
    while (b > a && m[b - 1] == 0) --b;
    if (a == W) a = 0, b = W;  // no kept key: uniform over all keys
    ks.lo[i] = a, ks.hi[i] = b;
  }
  ks.rlo.assign(W, L);
  ks.rhi.assign(W, 0);
  for (int i = 0; i < L; ++i)
    for (int w = ks.lo[i]; w < ks.hi[i]; ++w)
      ks.rlo[w] = std::min(ks.rlo[w], i), ks.rhi[w] = i + 1;
  ks.za.assign(ks.Lqp, 0);
  ks.zb.assign(ks.Lqp, 0);
  for (int i0 = 0; i0 < L; i0 += RO) {
    int a, b;
    ks.span(i0, i0 + RO, a, b);
    for (int i = i0; i < i0 + RO && i < L; ++i) ks.za[i] = a, ks.zb[i] = b;
  }
  for (int w = 0; w < W; ++w)
    for (int i = ks.rlo[w]; i < ks.rhi[w]; ++i)
      ks.za[i] = std::min(ks.za[i], w), ks.zb[i] = std::max(ks.zb[i], w + 1);
}

// G (Lqp x Lkp) = A (Lqp x D, packed) times Bt (D x Lkp), in RQ x RK blocks over the keys each
// block of rows spans (entries outside are not written); with `masked`, entries of masked keys
// are -inf (the scores before the softmax).
template <int D>
static void a_bt(const float* A, const float* Bt, float* G, const Keys& ks, bool masked) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  const int Lkp = ks.Lkp;
  for (int i0 = 0; i0 < ks.Lqp; i0 += RQ) {
    int wa, wb;
    ks.span(i0, i0 + RQ, wa, wb);
    if (wa >= wb) continue;
    for (int j0 = 16 * wa / RK * RK; j0 < 16 * wb; j0 += RK) {
      __m512 acc[RQ][RK / 16];
      for (int a = 0; a < RQ; ++a)
        for (int c = 0; c < RK / 16; ++c) acc[a][c] = _mm512_setzero_ps();
      for (int d = 0; d < D; ++d) {
        __m512 bv[RK / 16];
        for (int c = 0; c < RK / 16; ++c) bv[c] = _mm512_loadu_ps(Bt + d * Lkp + j0 + 16 * c);
        for (int a = 0; a < RQ; ++a) {
          const __m512 ab = _mm512_set1_ps(A[(i0 + a) * D + d]);
          for (int c = 0; c < RK / 16; ++c) acc[a][c] = _mm512_fmadd_ps(ab, bv[c], acc[a][c]);
        }
      }
      for (int a = 0; a < RQ; ++a) {
        float* g = G + (size_t)(i0 + a) * Lkp + j0;
        if (!masked) {
          for (int c = 0; c < RK / 16; ++c) _mm512_storeu_ps(g + 16 * c, acc[a][c]);
          continue;
        }
        const __mmask16* m = ks.row(i0 + a) + j0 / 16;
        for (int c = 0; c < RK / 16; ++c)
          _mm512_storeu_ps(g + 16 * c, _mm512_mask_blend_ps(m[c], ninf, acc[a][c]));
      }
    }
  }
}

// Zeros in the words of row i (of S, P or dS) that the products read outside its span.
static inline void zero_outside(float* s, const Keys& ks, int i) {
  const int a = 16 * ks.za[i], b = 16 * ks.zb[i], j0 = 16 * ks.lo[i], j1 = 16 * ks.hi[i];
  if (a < j0) std::memset(s + a, 0, (j0 - a) * sizeof(float));
  if (j1 < b) std::memset(s + j1, 0, (b - j1) * sizeof(float));
}

// In place over masked scores S (Lqp x Lkp): the softmax of each row's kept keys (a row with no
// key: uniform over all Lk keys, as XLA's softmax of equal scores), then dropout when dr is on;
// zero where the products read outside each row's span (za, zb) and in rows >= Lq.
static void softmax_rows(float* S, const Keys& ks, const Drop* dr) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  const int Lq = ks.Lq, Lk = ks.Lk, Lkp = ks.Lkp;
  for (int i = 0; i < Lq; ++i) {
    float* s = S + (size_t)i * Lkp;
    const __mmask16* m = ks.row(i);
    const int j0 = 16 * ks.lo[i], j1 = 16 * ks.hi[i];
    __m512 mx = ninf;
    for (int j = j0; j < j1; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
    const float top = _mm512_reduce_max_ps(mx);
    if (top == -INFINITY) {  // no kept key: the span is every word
      for (int j = 0; j < Lkp; ++j) s[j] = j < Lk ? 1.0f / Lk : 0.f;
    } else {
      const __m512 mm = _mm512_set1_ps(top);
      __m512 sum = _mm512_setzero_ps();
      for (int j = j0; j < j1; j += 16) {
        const __m512 e =
            _mm512_maskz_mov_ps(m[j / 16], exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), mm)));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(s + j, e);
      }
      const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
      for (int j = j0; j < j1; j += 16)
        _mm512_storeu_ps(s + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inv));
    }
    if (dr && dr->on) drop_row(s, i, Lq, j0, j1, *dr);
    zero_outside(s, ks, i);
  }
  for (int i = Lq; i < ks.Lqp; ++i) std::memset(S + (size_t)i * Lkp, 0, Lkp * sizeof(float));
}

// out[i] (i < Lq, row stride ts) = scale * sum_j G[i, j] X[j, :] (X: Lk x D packed) over the keys
// each block of rows spans (G is zero outside a row's span): the products O = Pd V and dQ = dS K,
// in RO x D register blocks over i.
template <int D>
static void g_times(const float* G, const float* X, float* out, const Keys& ks, int ts,
                    float scale) {
  constexpr int C = D / 16;
  const int Lkp = ks.Lkp;
  for (int i0 = 0; i0 < ks.Lqp; i0 += RO) {
    __m512 acc[RO][C];
    for (int a = 0; a < RO; ++a)
      for (int c = 0; c < C; ++c) acc[a][c] = _mm512_setzero_ps();
    int wa, wb;
    ks.span(i0, i0 + RO, wa, wb);
    for (int j = 16 * wa, j1 = std::min(16 * wb, ks.Lk); j < j1; ++j) {
      __m512 xv[C];
      for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_ps(X + j * D + 16 * c);
      for (int a = 0; a < RO; ++a) {
        const __m512 gb = _mm512_set1_ps(G[(size_t)(i0 + a) * Lkp + j]);
        for (int c = 0; c < C; ++c) acc[a][c] = _mm512_fmadd_ps(gb, xv[c], acc[a][c]);
      }
    }
    const __m512 sc = _mm512_set1_ps(scale);
    for (int a = 0; a < RO && i0 + a < ks.Lq; ++a)
      for (int c = 0; c < C; ++c)
        _mm512_storeu_ps(out + (size_t)(i0 + a) * ts + 16 * c, _mm512_mul_ps(acc[a][c], sc));
  }
}

// out[r] (r < Lk, row stride ts) = scale * sum_i G[i, r] X[i, :] over the query rows whose spans
// cover key r (G: Lqp x Lkp, zero outside each row's span): the transposed products dV = Pd^T dO
// and dK = dS^T Q, in R x D register blocks over r.
template <int D>
static void gt_times(const float* G, const float* X, float* out, const Keys& ks, int ts,
                     float scale) {
  constexpr int C = D / 16, R = C <= 2 ? 8 : 4;
  static_assert(16 % R == 0, "a block of keys lies in one mask word");
  const int Lkp = ks.Lkp;
  for (int r0 = 0; r0 < ks.Lk; r0 += R) {
    __m512 acc[R][C];
    for (int a = 0; a < R; ++a)
      for (int c = 0; c < C; ++c) acc[a][c] = _mm512_setzero_ps();
    for (int i = ks.rlo[r0 / 16]; i < ks.rhi[r0 / 16]; ++i) {
      __m512 xv[C];
      for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_ps(X + i * D + 16 * c);
      const float* g = G + (size_t)i * Lkp + r0;
      for (int a = 0; a < R; ++a) {
        const __m512 gb = _mm512_set1_ps(g[a]);
        for (int c = 0; c < C; ++c) acc[a][c] = _mm512_fmadd_ps(gb, xv[c], acc[a][c]);
      }
    }
    const __m512 sc = _mm512_set1_ps(scale);
    for (int a = 0; a < R && r0 + a < ks.Lk; ++a)
      for (int c = 0; c < C; ++c)
        _mm512_storeu_ps(out + (size_t)(r0 + a) * ts + 16 * c, _mm512_mul_ps(acc[a][c], sc));
  }
}

// Floats of per-thread scratch for one head of length L: the backward's (the forward uses a
// prefix of it): qp, dop Lqp x D; kt, vt D x Lkp; kp Lkp x D; P, G Lqp x Lkp.
static size_t scratch_floats(int L, int D) {
  const size_t Lkp = round_up(L, RK), Lqp = round_up(L, QPAD);
  return 2 * Lqp * D + 3 * D * Lkp + 2 * Lqp * Lkp;
}

// dst (rows x D, contiguous) = the first n token rows of src (stride ts), zero rows after.
template <int D>
static inline void pack_rows(const float* src, float* dst, int n, int rows, int ts) {
  for (int i = 0; i < n; ++i) std::memcpy(dst + i * D, src + (size_t)i * ts, D * sizeof(float));
  if (rows > n) std::memset(dst + (size_t)n * D, 0, (size_t)(rows - n) * D * sizeof(float));
}

// dst (D x cols) = scale * the first n token rows of src (stride ts) transposed, zero columns
// after; 16 tokens at a time through registers.
template <int D>
static inline void transpose(const float* src, float* dst, int n, int cols, int ts, float scale) {
  alignas(64) float tile[16][D];
  for (int j0 = 0; j0 < cols; j0 += 16) {
    for (int t = 0; t < 16; ++t)
      for (int d = 0; d < D; ++d) tile[t][d] = j0 + t < n ? src[(size_t)(j0 + t) * ts + d] * scale : 0.f;
    for (int d = 0; d < D; ++d)
      for (int t = 0; t < 16; ++t) dst[(size_t)d * cols + j0 + t] = tile[t][d];
  }
}

// The forward of one (batch row, head): out = dropout(softmax(q k^T scale)) v. q, k, v point at
// token 0 of this head, token stride `ts` floats; out likewise; ks: what each query sees.
// Operands are packed and padded so every register block is full (compile-time sizes keep the
// accumulators in registers): qp Lqp x D, kt D x Lkp (K transposed, pre-scaled), vp Lk x D,
// S Lqp x Lkp.
template <int D>
static void head(const float* q, const float* k, const float* v, const Keys& ks, const Drop& dr,
                 float* out, int ts, float scale, float* buf) {
  const int Lq = ks.Lq, Lk = ks.Lk, Lkp = ks.Lkp, Lqp = ks.Lqp;
  float* qp = buf;
  float* kt = qp + (size_t)Lqp * D;
  float* vp = kt + (size_t)D * Lkp;
  float* S = vp + (size_t)Lk * D;
  pack_rows<D>(q, qp, Lq, Lqp, ts);
  transpose<D>(k, kt, Lk, Lkp, ts, scale);
  pack_rows<D>(v, vp, Lk, Lk, ts);
  a_bt<D>(qp, kt, S, ks, true);
  softmax_rows(S, ks, &dr);
  g_times<D>(S, vp, out, ks, ts, 1.f);
}

// The backward of one (row, head), recomputing P as `head` does: dV = Pd^T dO,
// dS = P (dP - rowsum(dO O)) on kept keys, dQ = scale dS K, dK = scale dS^T Q.
template <int D>
static void head_bwd(const float* q, const float* k, const float* v, const Keys& ks,
                     const Drop& dr, const float* o, const float* dout, float* dq, float* dk,
                     float* dv, int ts, float scale, float* buf) {
  const int Lq = ks.Lq, Lk = ks.Lk, Lkp = ks.Lkp, Lqp = ks.Lqp;
  float* qp = buf;
  float* dop = qp + (size_t)Lqp * D;
  float* kt = dop + (size_t)Lqp * D;
  float* vt = kt + (size_t)D * Lkp;
  float* kp = vt + (size_t)D * Lkp;
  float* P = kp + (size_t)Lkp * D;
  float* G = P + (size_t)Lqp * Lkp;
  pack_rows<D>(q, qp, Lq, Lqp, ts);
  pack_rows<D>(dout, dop, Lq, Lqp, ts);
  transpose<D>(k, kt, Lk, Lkp, ts, scale);
  pack_rows<D>(k, kp, Lk, Lkp, ts);
  transpose<D>(v, vt, Lk, Lkp, ts, 1.f);
  a_bt<D>(qp, kt, P, ks, true);
  softmax_rows(P, ks, nullptr);  // P undropped
  // dV = Pd^T dO
  for (int i = 0; i < Lq; ++i) {  // the words gt_times reads
    const size_t at = (size_t)i * Lkp + 16 * ks.za[i];
    std::memcpy(G + at, P + at, 16 * (ks.zb[i] - ks.za[i]) * sizeof(float));
    if (dr.on) drop_row(G + (size_t)i * Lkp, i, Lq, 16 * ks.lo[i], 16 * ks.hi[i], dr);
  }
  gt_times<D>(G, dop, dv, ks, ts, 1.f);
  // dS = P (dP - rowsum(dO O)), dP = dropout'(dO V^T); zero on masked keys and outside spans
  a_bt<D>(dop, vt, G, ks, false);
  for (int i = 0; i < Lqp; ++i) {
    float* g = G + (size_t)i * Lkp;
    if (i >= Lq) {
      std::memset(g, 0, Lkp * sizeof(float));
      continue;
    }
    const int j0 = 16 * ks.lo[i], j1 = 16 * ks.hi[i];
    float rs = 0.f;
    for (int d = 0; d < D; ++d) rs += dout[(size_t)i * ts + d] * o[(size_t)i * ts + d];
    if (dr.on) drop_row(g, i, Lq, j0, j1, dr);  // kept: dPd / keep, dropped: 0
    const __mmask16* m = ks.row(i);
    const __m512 rsv = _mm512_set1_ps(rs);
    const float* p = P + (size_t)i * Lkp;
    for (int j = j0; j < j1; j += 16) {
      const __m512 ds =
          _mm512_mul_ps(_mm512_loadu_ps(p + j), _mm512_sub_ps(_mm512_loadu_ps(g + j), rsv));
      _mm512_storeu_ps(g + j, _mm512_maskz_mov_ps(m[j / 16], ds));
    }
    zero_outside(g, ks, i);
  }
  g_times<D>(G, kp, dq, ks, ts, scale);
  gt_times<D>(G, qp, dk, ks, ts, scale);
}

// Runs fn(buf, ks, off, dr) for every (batch row, head) p = b N + h of (B, L, N, D) tensors on
// `threads` threads, each with its own scratch; ks: what row b's queries see (built once per
// row and thread), off: the head's first element, dr: the dropout with this head's index base.
template <typename Fn>
static void for_heads(int B, int L, int N, int D, const int32_t* mask, MaskKind kind,
                      const Drop& drop, int threads, Fn fn) {
  const int ts = N * D;
  auto work = [&](int t) {
    std::vector<float> buf(scratch_floats(L, D));
    Keys ks;
    int built = -1;
    for (int p = t; p < B * N; p += threads) {
      const int b = p / N, h = p % N;
      if (b != built) build_keys(mask + (size_t)b * (kind == QUERY_KEYS ? L : 1) * L, kind, L, ks);
      built = b;
      Drop dr = drop;
      dr.base = (uint32_t)((uint64_t)p * L * L);
      fn(buf.data(), ks, (size_t)b * L * ts + (size_t)h * D, dr);
    }
  };
  threads = std::max(1, std::min(threads, B * N));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
}

// Calls fn(std::integral_constant<int, D>) for a head size the kernels have; false otherwise.
template <typename Fn>
static bool with_head_size(int D, Fn fn) {
  if (D == 16) fn(std::integral_constant<int, 16>());
  else if (D == 32) fn(std::integral_constant<int, 32>());
  else if (D == 64) fn(std::integral_constant<int, 64>());
  else return false;
  return true;
}

// The FFI operands both handlers share: q (B, L, N, D), mask (B, 1|L, L) int32 (segment ids
// (B, 1, L) when the `segments` attribute is set), words (2,).
struct Call {
  int B, L, N, D;
  MaskKind kind;
  float scale;
  Drop drop;
};

static std::optional<Call> read_call(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::S32> mask,
                                     ffi::Buffer<ffi::U32> words, int64_t thresh, float keep,
                                     int32_t segments) {
  auto dims = q.dimensions();
  auto md = mask.dimensions();
  if (dims.size() != 4 || md.size() != 3 || words.element_count() != 2) return std::nullopt;
  if (md[1] != 1 && segments) return std::nullopt;
  const MaskKind kind = md[1] != 1 ? QUERY_KEYS : segments ? SEGMENTS : KEYS;
  Call c{(int)dims[0], (int)dims[1], (int)dims[2], (int)dims[3], kind,
         1.0f / std::sqrt((float)dims[3]), Drop{}};
  c.drop.on = thresh > 0;
  c.drop.k0 = words.typed_data()[0];
  c.drop.k1 = words.typed_data()[1];
  c.drop.thresh = (uint32_t)thresh;
  c.drop.keep = keep;
  return c;
}

static ffi::Error AttentionImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                                ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> mask,
                                ffi::Buffer<ffi::U32> words, ffi::ResultBuffer<ffi::F32> out,
                                int32_t threads, int64_t thresh, float keep, int32_t segments) {
  const auto c = read_call(q, mask, words, thresh, keep, segments);
  if (!c)
    return ffi::Error::InvalidArgument("dualenc_attention: q (B, L, N, D), mask (B, 1|L, L), words (2,)");
  const float *qd = q.typed_data(), *kd = k.typed_data(), *vd = v.typed_data();
  float* od = out->typed_data();
  const bool ok = with_head_size(c->D, [&](auto dd) {
    constexpr int D = decltype(dd)::value;
    for_heads(c->B, c->L, c->N, D, mask.typed_data(), c->kind, c->drop, threads,
              [&](float* buf, const Keys& ks, size_t off, const Drop& dr) {
                head<D>(qd + off, kd + off, vd + off, ks, dr, od + off, c->N * D, c->scale, buf);
              });
  });
  if (!ok) return ffi::Error::InvalidArgument("dualenc_attention: head size must be 16, 32 or 64");
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DualencAttention, AttentionImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("threads")
                                  .Attr<int64_t>("thresh")
                                  .Attr<float>("keep")
                                  .Attr<int32_t>("segments"));

static ffi::Error AttentionBwdImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> mask,
                                   ffi::Buffer<ffi::U32> words, ffi::Buffer<ffi::F32> o,
                                   ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                                   ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                                   int32_t threads, int64_t thresh, float keep, int32_t segments) {
  const auto c = read_call(q, mask, words, thresh, keep, segments);
  if (!c)
    return ffi::Error::InvalidArgument("dualenc_attention_bwd: q (B, L, N, D), mask (B, 1|L, L)");
  const float *qd = q.typed_data(), *kd = k.typed_data(), *vd = v.typed_data();
  const float *od = o.typed_data(), *god = dout.typed_data();
  float *dqd = dq->typed_data(), *dkd = dk->typed_data(), *dvd = dv->typed_data();
  const bool ok = with_head_size(c->D, [&](auto dd) {
    constexpr int D = decltype(dd)::value;
    for_heads(c->B, c->L, c->N, D, mask.typed_data(), c->kind, c->drop, threads,
              [&](float* buf, const Keys& ks, size_t off, const Drop& dr) {
                head_bwd<D>(qd + off, kd + off, vd + off, ks, dr, od + off, god + off, dqd + off,
                            dkd + off, dvd + off, c->N * D, c->scale, buf);
              });
  });
  if (!ok) return ffi::Error::InvalidArgument("dualenc_attention_bwd: head size must be 16, 32 or 64");
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DualencAttentionBwd, AttentionBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("threads")
                                  .Attr<int64_t>("thresh")
                                  .Attr<float>("keep")
                                  .Attr<int32_t>("segments"));
