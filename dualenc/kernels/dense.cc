// Weight and bias gradients of a dense layer for XLA:CPU: dW = X^T G (K x N), db = column sums of
// G, f32, AVX-512. XLA:CPU runs the transposed-operand GEMM X^T G at 60-75 % of its plain GEMM
// rate and the bias gradient as a separate pass over G; in the MNRL train step the two together
// took a third of the step. Here X^T and G are packed into cache-sized panels (BLIS-style) and a
// 12 x 32 register tile accumulates with FMAs; db is summed while G is packed. Built and loaded
// by dualenc/models/kernels.py with attention.cc.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int MR = 12;   // rows of dW (features of X) per register tile
constexpr int NR = 32;   // columns of dW (features of G) per register tile: two vectors
constexpr int KC = 256;  // rows of X and G (tokens) per packed panel: a G micro-panel fits L1
constexpr int MC = 480;  // dW rows per packed X block (L2)
constexpr int NC = 512;  // dW columns per packed G block (L2)

// The first n lanes of a 16-float vector (none for n <= 0): masks the columns past N in a
// 32-column panel, n valid ones as low_lanes(n) and low_lanes(n - 16).
inline __mmask16 low_lanes(int n) {
  return (__mmask16)(n <= 0 ? 0 : (1u << std::min(n, 16)) - 1);
}

// Xp: mc/MR micro-panels, each (kc, MR): Xp[p][t][i] = X[t0 + t, k0 + p MR + i], zero-padded.
void pack_x(const float* X, int K, int t0, int kc, int k0, int mc, float* Xp) {
  for (int p = 0; p < mc; p += MR) {
    const int m = std::min(MR, mc - p);
    float* dst = Xp + (size_t)p * kc;
    for (int t = 0; t < kc; ++t, dst += MR) {
      const float* src = X + (size_t)(t0 + t) * K + k0 + p;
      if (m == MR) {
        std::memcpy(dst, src, MR * sizeof(float));
      } else {
        for (int i = 0; i < MR; ++i) dst[i] = i < m ? src[i] : 0.f;
      }
    }
  }
}

// Gp: nc/NR micro-panels, each (kc, NR) (zero-padded); adds the packed rows into db[n0:n0+nc]
// when db is given.
void pack_g(const float* G, int N, int t0, int kc, int n0, int nc, float* Gp, float* db) {
  for (int p = 0; p < nc; p += NR) {
    const int n = std::min(NR, nc - p);
    const __mmask16 lo = low_lanes(n), hi = low_lanes(n - 16);
    float* dst = Gp + (size_t)p * kc;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    for (int t = 0; t < kc; ++t, dst += NR) {
      const float* src = G + (size_t)(t0 + t) * N + n0 + p;
      const __m512 a = _mm512_maskz_loadu_ps(lo, src), b = _mm512_maskz_loadu_ps(hi, src + 16);
      _mm512_store_ps(dst, a);
      _mm512_store_ps(dst + 16, b);
      s0 = _mm512_add_ps(s0, a);
      s1 = _mm512_add_ps(s1, b);
    }
    if (db) {
      float* d = db + n0 + p;
      _mm512_mask_storeu_ps(d, lo, _mm512_add_ps(_mm512_maskz_loadu_ps(lo, d), s0));
      _mm512_mask_storeu_ps(d + 16, hi, _mm512_add_ps(_mm512_maskz_loadu_ps(hi, d + 16), s1));
    }
  }
}

// C[0:m, 0:n] (row stride ldc) = (first ? 0 : C) + sum_t Xp[t][i] Gp[t][j], a 12 x 32 tile.
void tile(const float* Xp, const float* Gp, int kc, float* C, int ldc, int m, int n, bool first) {
  __m512 c[MR][2];
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (int t = 0; t < kc; ++t, Xp += MR, Gp += NR) {
    const __m512 g0 = _mm512_load_ps(Gp), g1 = _mm512_load_ps(Gp + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 x = _mm512_set1_ps(Xp[i]);
      c[i][0] = _mm512_fmadd_ps(x, g0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(x, g1, c[i][1]);
    }
  }
  const __mmask16 lo = low_lanes(n), hi = low_lanes(n - 16);
  for (int i = 0; i < m; ++i) {
    float* row = C + (size_t)i * ldc;
    if (!first) {
      c[i][0] = _mm512_add_ps(c[i][0], _mm512_maskz_loadu_ps(lo, row));
      c[i][1] = _mm512_add_ps(c[i][1], _mm512_maskz_loadu_ps(hi, row + 16));
    }
    _mm512_mask_storeu_ps(row, lo, c[i][0]);
    _mm512_mask_storeu_ps(row + 16, hi, c[i][1]);
  }
}

// A 64-byte aligned start inside buf (which has 16 spare floats) for the aligned panel loads.
inline float* aligned64(std::vector<float>& buf) {
  return reinterpret_cast<float*>(((uintptr_t)buf.data() + 63) & ~(uintptr_t)63);
}

// dW[k0:k1, n0:n1] over all T rows; db[n0:n1] too when with_db.
void block(const float* X, const float* G, int T, int K, int N, int k0, int k1, int n0, int n1,
           float* dW, float* db, bool with_db) {
  std::vector<float> xbuf((size_t)KC * MC + 16), gbuf((size_t)KC * NC + 16);
  float *Xp = aligned64(xbuf), *Gp = aligned64(gbuf);
  if (with_db) std::fill(db + n0, db + n1, 0.f);
  if (T == 0) {
    for (int k = k0; k < k1; ++k) std::fill(dW + (size_t)k * N + n0, dW + (size_t)k * N + n1, 0.f);
    return;
  }
  for (int jc = n0; jc < n1; jc += NC) {
    const int nc = std::min(NC, n1 - jc);
    for (int pc = 0; pc < T; pc += KC) {
      const int kc = std::min(KC, T - pc);
      pack_g(G, N, pc, kc, jc, nc, Gp, with_db ? db : nullptr);
      for (int ic = k0; ic < k1; ic += MC) {
        const int mc = std::min(MC, k1 - ic);
        pack_x(X, K, pc, kc, ic, mc, Xp);
        for (int jr = 0; jr < nc; jr += NR)
          for (int ir = 0; ir < mc; ir += MR)
            tile(Xp + (size_t)ir * kc, Gp + (size_t)jr * kc, kc, dW + (size_t)(ic + ir) * N + jc + jr,
                 N, std::min(MR, mc - ir), std::min(NR, nc - jr), pc == 0);
      }
    }
  }
}

ffi::Error DenseGradImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                         ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db,
                         int32_t threads) {
  auto xd = x.dimensions(), gd = g.dimensions();
  if (xd.size() != 2 || gd.size() != 2 || xd[0] != gd[0])
    return ffi::Error::InvalidArgument("dualenc_dense_grad: x (T, K) and g (T, N)");
  const int T = (int)xd[0], K = (int)xd[1], N = (int)gd[1];
  const float *X = x.typed_data(), *G = g.typed_data();
  float *W = dw->typed_data(), *B = db->typed_data();
  // Threads split dW along its longer side, in whole register tiles; each packs its own panels.
  const bool by_rows = K >= N;
  const int len = by_rows ? K : N, unit = by_rows ? MR : NR;
  threads = std::max(1, std::min<int>(threads, (len + unit - 1) / unit));
  auto work = [&](int t) {
    const int per = ((len + unit - 1) / unit + threads - 1) / threads * unit;
    const int a = std::min(len, t * per), b = std::min(len, (t + 1) * per);
    if (a >= b) return;
    if (by_rows) block(X, G, T, K, N, a, b, 0, N, W, B, t == 0);
    else block(X, G, T, K, N, 0, K, a, b, W, B, true);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DualencDenseGrad, DenseGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("threads"));
