// CPU kernels of an IGC layer as XLA FFI custom calls (mode `native` of igc_jax/igc/modes.py).
//
// Why: XLA's CPU grouped convolution runs 16-49x slower (fwd+bwd) than a dense one, and the
// pure-XLA rewrites of igc_jax/igc/modes.py pay for layout changes and extra memory passes. Here the
// primary conv does exactly its own multiply-adds, vectorised along the output channels of NHWC data:
//
//   y[n, ho, wo, c] = sum_{i, j, ci} w[i, j, ci, c] * x[n, ho*sh + i - pt, wo*sw + j - pl, src(ci, c)]
//   src(ci, c) = (c / cout_g) * cin_g + ci          (input channel ci of output channel c's group)
//
// Targets: IgcPrimaryForward (y; with the flipped kernel on dy it is also the input gradient),
// IgcPrimaryKernelGrad (dw) and IgcMixingGrad (dQ = y1^T dy of the layer's C×C mixing matmul).
// Small groups (cout_g dividing the vector width, cin_g ≤ 2·cout_g, 3×3) read padded NHWC rows
// and pick each term's inputs by a lane shuffle of a two-vector window. Other shapes expand each
// needed input row once into xe[wp][ci][c] = x[..., src(ci, c)] (a ring of kh rows), after which
// every term is a contiguous multiply-add over c. Weight gradients are summed per image (per
// image chunk for dQ) and then in a fixed order, so results do not depend on how images were
// spread over XLA's intra-op threads (bit-reproducible runs).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t N, H, W, Cin;      // input NHWC
  int64_t Ho, Wo, C;         // output
  int64_t kh, kw, cin_g, cout_g;
  int64_t sh, sw, pt, pl;
  int64_t Wp;                // padded width that the windows span
};

// Runs fn(0..n-1) on the calling thread and the pool's threads; returns when all are done.
//
// The caller never waits for a helper that has not started: XLA may run several custom calls at
// once on the same pool, and blocking on queued tasks would deadlock it. Helpers that start late
// find no work left and only touch the shared counters (heap state that outlives this call).
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& fn) {
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  // Runs claimed items; true when it finished the last one.
  auto work = [state, n](const F* f) {
    int64_t finished = 0;
    for (int64_t i = state->next.fetch_add(1); i < n; i = state->next.fetch_add(1)) {
      (*f)(i);
      ++finished;
    }
    if (finished) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->done += finished;
      if (state->done == n) state->cv.notify_all();
    }
  };
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work, f = &fn] { work(f); });
  work(&fn);
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == n; });
}

// A ring of kh expanded rows, row hp (padded coordinates) in slot hp % kh.
template <typename T>
struct RowRing {
  const Geometry& g;
  std::vector<T> buf;
  std::vector<int64_t> row;  // which padded row each slot holds (-1: none)
  int64_t row_size;

  RowRing(const Geometry& geo, int64_t size) : g(geo), row(geo.kh, -1), row_size(size) {
    buf.assign(geo.kh * row_size, T(0));
  }
  T* slot(int64_t hp) { return buf.data() + (hp % g.kh) * row_size; }

  // Makes sure the ring holds the kh padded rows output row ho reads, filling a missing row hp
  // with fill(hp, slot); their addresses in rows.
  template <typename Fill>
  void Load(int64_t ho, T** rows, const Fill& fill) {
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t hp = ho * g.sh + i;
      if (row[hp % g.kh] != hp) {
        fill(hp, slot(hp));
        row[hp % g.kh] = hp;
      }
      rows[i] = slot(hp);
    }
  }
};

// Fills xe[wp][ci][c] for padded row hp of image x_n (zeros outside the image).
template <typename T>
void ExpandRow(const Geometry& g, const T* x_n, const int32_t* src, int64_t hp, T* xe) {
  const int64_t h = hp - g.pt;
  const int64_t K = g.cin_g * g.C;
  for (int64_t wp = 0; wp < g.Wp; ++wp) {
    T* out = xe + wp * K;
    const int64_t w = wp - g.pl;
    if (h < 0 || h >= g.H || w < 0 || w >= g.W) {
      std::fill(out, out + K, T(0));
      continue;
    }
    const T* px = x_n + (h * g.W + w) * g.Cin;
    for (int64_t k = 0; k < K; ++k) out[k] = px[src[k]];
  }
}

// src[ci * C + c] = (c / cout_g) * cin_g + ci.
std::vector<int32_t> SourceChannels(const Geometry& g) {
  std::vector<int32_t> src(g.cin_g * g.C);
  for (int64_t ci = 0; ci < g.cin_g; ++ci)
    for (int64_t c = 0; c < g.C; ++c) src[ci * g.C + c] = (c / g.cout_g) * g.cin_g + ci;
  return src;
}

// V-lane vectors (32 bytes: AVX2 registers; GCC splits or merges them for other ISAs).
template <typename T>
struct Lanes {
  typedef T Vec __attribute__((vector_size(32)));
  static constexpr int64_t V = 32 / sizeof(T);
  static Vec Load(const T* p) {
    Vec v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void Store(T* p, Vec v) { std::memcpy(p, &v, sizeof v); }
};

// The forward pass over P adjacent output pixels of row `ho` and channels [c0, c0 + V).
template <typename T, int P>
inline void ForwardBlock(const Geometry& g, T* const* xrows, const T* w, int64_t wo, int64_t c0,
                         T* yrow) {
  using Ln = Lanes<T>;
  typename Ln::Vec acc[P] = {};
  const int64_t K = g.cin_g * g.C;
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) {
      const T* xe = xrows[i] + (wo * g.sw + j) * K + c0;
      const T* wt = w + (i * g.kw + j) * K + c0;
      for (int64_t ci = 0; ci < g.cin_g; ++ci) {
        const auto wv = Ln::Load(wt + ci * g.C);
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) acc[p] += wv * Ln::Load(xe + p * g.sw * K + ci * g.C);
      }
    }
  for (int p = 0; p < P; ++p) Ln::Store(yrow + (wo + p) * g.C + c0, acc[p]);
}

// The same for one pixel and the channels [c0, C) that do not fill a vector.
template <typename T>
inline void ForwardTail(const Geometry& g, T* const* xrows, const T* w, int64_t wo, int64_t c0,
                        T* yrow) {
  const int64_t K = g.cin_g * g.C;
  for (int64_t c = c0; c < g.C; ++c) {
    T acc = 0;
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j)
        for (int64_t ci = 0; ci < g.cin_g; ++ci)
          acc += w[(i * g.kw + j) * K + ci * g.C + c] * xrows[i][(wo * g.sw + j) * K + ci * g.C + c];
    yrow[wo * g.C + c] = acc;
  }
}

// Loads the kh expanded rows output row ho reads (ExpandRow); their addresses in xrows.
template <typename T>
void LoadRows(const Geometry& g, const T* x_n, const int32_t* src, int64_t ho, RowRing<T>& ring,
              T** xrows) {
  ring.Load(ho, xrows, [&](int64_t hp, T* slot) { ExpandRow(g, x_n, src, hp, slot); });
}

template <typename T>
void ForwardImage(const Geometry& g, const T* x_n, const T* w, const int32_t* src, T* y_n) {
  constexpr int P = 4;
  const int64_t V = Lanes<T>::V, Cv = g.C - g.C % V;
  RowRing<T> ring(g, g.Wp * g.cin_g * g.C);
  std::vector<T*> xrows(g.kh);
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    LoadRows(g, x_n, src, ho, ring, xrows.data());
    T* yrow = y_n + ho * g.Wo * g.C;
    for (int64_t c0 = 0; c0 < Cv; c0 += V) {
      int64_t wo = 0;
      for (; wo + P <= g.Wo; wo += P) ForwardBlock<T, P>(g, xrows.data(), w, wo, c0, yrow);
      for (; wo < g.Wo; ++wo) ForwardBlock<T, 1>(g, xrows.data(), w, wo, c0, yrow);
    }
    if (Cv < g.C)
      for (int64_t wo = 0; wo < g.Wo; ++wo) ForwardTail(g, xrows.data(), w, wo, Cv, yrow);
  }
}

// dw[t][c0, c0 + V) += sum_wo xe_t(wo) * dy(wo) for NT kernel terms t (a term: tap i, j and input
// channel ci; terms[t] its expanded-row address), accumulated in registers along the row.
template <typename T, int NT>
inline void KernelGradTile(const Geometry& g, const T* const* terms, const T* dyrow, int64_t c0,
                           T* const* dws) {
  using Ln = Lanes<T>;
  typename Ln::Vec acc[NT] = {};
  const int64_t step = g.sw * g.cin_g * g.C;
  for (int64_t wo = 0; wo < g.Wo; ++wo) {
    const auto dv = Ln::Load(dyrow + wo * g.C + c0);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] += Ln::Load(terms[t] + wo * step + c0) * dv;
  }
  for (int t = 0; t < NT; ++t) Ln::Store(dws[t] + c0, Ln::Load(dws[t] + c0) + acc[t]);
}

template <typename T>
void KernelGradImage(const Geometry& g, const T* x_n, const T* dy_n, const int32_t* src, T* dw_n) {
  constexpr int NT = 8;
  const int64_t V = Lanes<T>::V, Cv = g.C - g.C % V, K = g.cin_g * g.C;
  const int64_t n_terms = g.kh * g.kw * g.cin_g;
  RowRing<T> ring(g, g.Wp * g.cin_g * g.C);
  std::vector<T*> xrows(g.kh);
  std::vector<const T*> terms(n_terms);
  std::vector<T*> dws(n_terms);
  for (int64_t t = 0; t < n_terms; ++t) dws[t] = dw_n + t * g.C;
  std::fill(dw_n, dw_n + n_terms * g.C, T(0));
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    LoadRows(g, x_n, src, ho, ring, xrows.data());
    for (int64_t i = 0, t = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j)
        for (int64_t ci = 0; ci < g.cin_g; ++ci, ++t) terms[t] = xrows[i] + j * K + ci * g.C;
    const T* dyrow = dy_n + ho * g.Wo * g.C;
    for (int64_t c0 = 0; c0 < Cv; c0 += V) {
      int64_t t = 0;
      for (; t + NT <= n_terms; t += NT)
        KernelGradTile<T, NT>(g, terms.data() + t, dyrow, c0, dws.data() + t);
      for (; t < n_terms; ++t) KernelGradTile<T, 1>(g, terms.data() + t, dyrow, c0, dws.data() + t);
    }
    for (int64_t t = 0; t < n_terms; ++t)
      for (int64_t c = Cv; c < g.C; ++c) {
        T acc = 0;
        for (int64_t wo = 0; wo < g.Wo; ++wo) acc += terms[t][wo * g.sw * K + c] * dyrow[wo * g.C + c];
        dws[t][c] += acc;
      }
  }
}

// Lane indices for __builtin_shuffle on Lanes<T>::Vec.
template <typename T>
struct LaneMask {
  typedef typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type Index;
  typedef Index Mask __attribute__((vector_size(32)));
};

// Copies padded row hp of image x_n (zeros outside the image): row[wp][c], one block copy.
template <typename T>
void PadRow(const Geometry& g, const T* x_n, int64_t hp, T* row) {
  const int64_t h = hp - g.pt, width = g.Wp * g.Cin;
  const int64_t first = std::min(g.pl, g.Wp), last = std::min(g.Wp, g.pl + g.W);  // image columns
  if (h < 0 || h >= g.H || first >= last) {
    std::fill(row, row + width, T(0));
    return;
  }
  std::fill(row, row + first * g.Cin, T(0));
  std::copy(x_n + h * g.W * g.Cin, x_n + (h * g.W + last - g.pl) * g.Cin, row + first * g.Cin);
  std::fill(row + last * g.Cin, row + width, T(0));
}

// Loads the kh padded rows output row ho reads (PadRow); their addresses in rows.
template <typename T>
void LoadPaddedRows(const Geometry& g, const T* x_n, int64_t ho, RowRing<T>& ring, T** rows) {
  ring.Load(ho, rows, [&](int64_t hp, T* slot) { PadRow(g, x_n, hp, slot); });
}

// Calls fn(std::integral_constant<int, M>) for the runtime M in {1, 2, 4, 8}.
template <typename F>
void DispatchM(int M, const F& fn) {
  switch (M) {
    case 1: fn(std::integral_constant<int, 1>()); break;
    case 2: fn(std::integral_constant<int, 2>()); break;
    case 4: fn(std::integral_constant<int, 4>()); break;
    case 8: fn(std::integral_constant<int, 8>()); break;
  }
}

// ---- Small groups (C/L = CO dividing the vector width, C_in/L = CI ≤ 2·CO, 3×3): the CIFAR and
// ImageNet L100M2 layers. A vector of V outputs aligned to groups reads the V/CO·CI input
// channels from c0·CI/CO on: at most two vectors of one padded row pixel. Term ci of lane u is
// window lane (u / CO)·CI + ci: one constant lane shuffle and one multiply-add per term, no
// gathered expansion; the weights are used as stored.

template <typename T, int CI, int CO>
struct Window {
  using Ln = Lanes<T>;
  using Mask = typename LaneMask<T>::Mask;
  static constexpr bool kTwo = CI * Ln::V / CO > Ln::V;  // the window spans two vectors
  static Mask Make(int ci) {
    Mask m;
    for (int64_t u = 0; u < Ln::V; ++u) m[u] = (u / CO) * CI + ci;
    return m;
  }
  // The terms' inputs for lanes c0.. of one pixel: lanes of the window at p.
  static typename Ln::Vec Pick(const T* p, const Mask& m) {
    if constexpr (kTwo)
      return __builtin_shuffle(Ln::Load(p), Ln::Load(p + Ln::V), m);
    else
      return __builtin_shuffle(Ln::Load(p), m);
  }
};

template <typename T, int CI, int CO, int P>
inline void WindowForwardBlock(const T* const* taps, int64_t step, const T* __restrict w,
                               int64_t C, const typename LaneMask<T>::Mask* masks, T* out) {
  using Ln = Lanes<T>;
  using Win = Window<T, CI, CO>;
  typename Ln::Vec acc[P] = {};
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t)
#pragma GCC unroll 8
    for (int ci = 0; ci < CI; ++ci) {
      const auto wv = Ln::Load(w + (t * CI + ci) * C);
      for (int p = 0; p < P; ++p) acc[p] += wv * Win::Pick(taps[t] + p * step, masks[ci]);
    }
  for (int p = 0; p < P; ++p) Ln::Store(out + p * C, acc[p]);
}

// Window slack: a padded row is followed by two spare vectors, so the last pixel's window load
// stays inside the ring (the spare lanes are zeros and never picked).
template <typename T>
int64_t WindowRowSize(const Geometry& g) { return g.Wp * g.Cin + 2 * Lanes<T>::V; }

template <typename T, int CI, int CO>
void WindowForwardImage(const Geometry& g, const T* x_n, const T* w, T* y_n) {
  constexpr int P = 4;
  typename LaneMask<T>::Mask masks[CI];
  for (int ci = 0; ci < CI; ++ci) masks[ci] = Window<T, CI, CO>::Make(ci);
  const int64_t V = Lanes<T>::V, C = g.C, Cv = C - C % V, step = g.sw * g.Cin;
  RowRing<T> ring(g, WindowRowSize<T>(g));
  T* rows[3];
  const T* taps[9];
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    LoadPaddedRows(g, x_n, ho, ring, rows);
    T* yrow = y_n + ho * g.Wo * C;
    for (int64_t c0 = 0; c0 < Cv; c0 += V) {
      const int64_t base = c0 / CO * CI;
      for (int64_t wo = 0; wo < g.Wo;) {
        for (int t = 0; t < 9; ++t) taps[t] = rows[t / 3] + (wo * g.sw + t % 3) * g.Cin + base;
        if (wo + P <= g.Wo) {
          WindowForwardBlock<T, CI, CO, P>(taps, step, w + c0, C, masks, yrow + wo * C + c0);
          wo += P;
        } else {
          WindowForwardBlock<T, CI, CO, 1>(taps, step, w + c0, C, masks, yrow + wo * C + c0);
          wo += 1;
        }
      }
    }
    for (int64_t wo = 0; wo < g.Wo; ++wo)
      for (int64_t c = Cv; c < C; ++c) {
        T acc = 0;
        for (int t = 0; t < 9; ++t)
          for (int ci = 0; ci < CI; ++ci)
            acc += w[(t * CI + ci) * C + c] *
                   rows[t / 3][(wo * g.sw + t % 3) * g.Cin + c / CO * CI + ci];
        yrow[wo * C + c] = acc;
      }
  }
}

// dw[i][j][ci][c] += sum over the image of the window term (i, j, ci)[c] * dy[c].
template <typename T, int CI, int CO>
void WindowKernelGradImage(const Geometry& g, const T* x_n, const T* dy_n, T* dw) {
  using Ln = Lanes<T>;
  using Win = Window<T, CI, CO>;
  typename LaneMask<T>::Mask masks[CI];
  for (int ci = 0; ci < CI; ++ci) masks[ci] = Win::Make(ci);
  const int64_t V = Ln::V, C = g.C, Cv = C - C % V;
  RowRing<T> ring(g, WindowRowSize<T>(g));
  T* rows[3];
  std::fill(dw, dw + 9 * CI * C, T(0));
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    LoadPaddedRows(g, x_n, ho, ring, rows);
    const T* dyrow = dy_n + ho * g.Wo * C;
    for (int i = 0; i < 3; ++i) {
      const T* row = rows[i];
      for (int64_t c0 = 0; c0 < Cv; c0 += V) {
        const int64_t base = c0 / CO * CI;
        typename Ln::Vec acc[3][CI] = {};
        for (int64_t wo = 0; wo < g.Wo; ++wo) {
          const auto dv = Ln::Load(dyrow + wo * C + c0);
          for (int j = 0; j < 3; ++j) {
            const T* p = row + (wo * g.sw + j) * g.Cin + base;
#pragma GCC unroll 8
            for (int ci = 0; ci < CI; ++ci) acc[j][ci] += Win::Pick(p, masks[ci]) * dv;
          }
        }
        for (int j = 0; j < 3; ++j)
          for (int ci = 0; ci < CI; ++ci) {
            T* d = dw + ((i * 3 + j) * CI + ci) * C + c0;
            Ln::Store(d, Ln::Load(d) + acc[j][ci]);
          }
      }
      for (int j = 0; j < 3; ++j)
        for (int ci = 0; ci < CI; ++ci)
          for (int64_t c = Cv; c < C; ++c) {
            T acc = 0;
            for (int64_t wo = 0; wo < g.Wo; ++wo)
              acc += row[(wo * g.sw + j) * g.Cin + c / CO * CI + ci] * dyrow[wo * C + c];
            dw[((i * 3 + j) * CI + ci) * C + c] += acc;
          }
    }
  }
}

// Calls fn(integral_constant CI, integral_constant CO) when the window path takes this layer
// (3×3, C_in/L and C/L in 1, 2, 4, 8, C/L dividing the vector width, C_in/L ≤ 2·C/L);
// returns whether it did.
template <typename T, int CI, int CO, typename F>
bool CallWindow(const F& fn) {
  if constexpr (CI <= 2 * CO && Lanes<T>::V % CO == 0) {
    fn(std::integral_constant<int, CI>(), std::integral_constant<int, CO>());
    return true;
  }
  return false;
}

template <typename T, int CI, typename F>
bool DispatchWindowOut(int64_t CO, const F& fn) {
  switch (CO) {
    case 1: return CallWindow<T, CI, 1>(fn);
    case 2: return CallWindow<T, CI, 2>(fn);
    case 4: return CallWindow<T, CI, 4>(fn);
    case 8: return CallWindow<T, CI, 8>(fn);
  }
  return false;
}

template <typename T, typename F>
bool DispatchWindow(const Geometry& g, const F& fn) {
  if (g.kh != 3 || g.kw != 3) return false;
  switch (g.cin_g) {
    case 1: return DispatchWindowOut<T, 1>(g.cout_g, fn);
    case 2: return DispatchWindowOut<T, 2>(g.cout_g, fn);
    case 4: return DispatchWindowOut<T, 4>(g.cout_g, fn);
    case 8: return DispatchWindowOut<T, 8>(g.cout_g, fn);
  }
  return false;
}

ffi::Error MakeGeometry(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w, int64_t Ho, int64_t Wo,
                        int64_t L, int64_t sh, int64_t sw, int64_t pt, int64_t pl, Geometry* g) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 4 || wd.size() != 4) return ffi::Error::InvalidArgument("igc_primary: rank-4 x and w expected");
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], Ho, Wo, wd[3], wd[0], wd[1], wd[2], 0, sh, sw, pt, pl, 0};
  if (L <= 0 || g->C % L || g->Cin != L * g->cin_g)
    return ffi::Error::InvalidArgument("igc_primary: kernel does not fit L groups of the input");
  g->cout_g = g->C / L;
  g->Wp = (Wo - 1) * sw + g->kw;
  if (x.element_type() != w.element_type())
    return ffi::Error::InvalidArgument("igc_primary: x and w must share a dtype");
  return ffi::Error::Success();
}

template <typename T>
void Forward(ffi::ThreadPool& pool, const Geometry& g, const T* x, const T* w, T* y) {
  const bool window = DispatchWindow<T>(g, [&](auto ci, auto co) {
    ParallelFor(pool, g.N, [&](int64_t n) {
      WindowForwardImage<T, decltype(ci)::value, decltype(co)::value>(
          g, x + n * g.H * g.W * g.Cin, w, y + n * g.Ho * g.Wo * g.C);
    });
  });
  if (window) return;
  const std::vector<int32_t> src = SourceChannels(g);
  ParallelFor(pool, g.N, [&](int64_t n) {
    ForwardImage(g, x + n * g.H * g.W * g.Cin, w, src.data(), y + n * g.Ho * g.Wo * g.C);
  });
}

// out = Σ_k parts[k·K .. (k+1)·K) for k = 0, 1, ..., n - 1, added in that order: partial sums
// kept per image (or fixed chunk of images), not per thread, make results reproducible.
template <typename T>
void SumInOrder(const std::vector<T>& parts, int64_t n, int64_t K, T* out) {
  std::copy(parts.begin(), parts.begin() + K, out);
  for (int64_t k = 1; k < n; ++k)
    for (int64_t i = 0; i < K; ++i) out[i] += parts[k * K + i];
}

// Per-image partials summed in image order: the result does not depend on the thread count.
template <typename T>
void KernelGrad(ffi::ThreadPool& pool, const Geometry& g, const T* x, const T* dy, T* dw) {
  const int64_t KW = g.kh * g.kw * g.cin_g * g.C;
  std::vector<T> partial(g.N * KW);
  const bool window = DispatchWindow<T>(g, [&](auto ci, auto co) {
    ParallelFor(pool, g.N, [&](int64_t n) {
      WindowKernelGradImage<T, decltype(ci)::value, decltype(co)::value>(
          g, x + n * g.H * g.W * g.Cin, dy + n * g.Ho * g.Wo * g.C, partial.data() + n * KW);
    });
  });
  if (!window) {
    const std::vector<int32_t> src = SourceChannels(g);
    ParallelFor(pool, g.N, [&](int64_t n) {
      KernelGradImage(g, x + n * g.H * g.W * g.Cin, dy + n * g.Ho * g.Wo * g.C, src.data(),
                      partial.data() + n * KW);
    });
  }
  SumInOrder(partial, g.N, KW, dw);
}

// Calls fn(T{}) with T the C++ type of a float32 or float64 buffer; an error for other dtypes.
template <typename F>
ffi::Error ForFloatType(ffi::DataType dtype, const char* name, const F& fn) {
  switch (dtype) {
    case ffi::DataType::F32:
      fn(float{});
      return ffi::Error::Success();
    case ffi::DataType::F64:
      fn(double{});
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument(std::string(name) + ": float32 or float64 only");
  }
}

ffi::Error PrimaryForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                              ffi::Result<ffi::AnyBuffer> y, int64_t L, int64_t sh, int64_t sw,
                              int64_t pt, int64_t pl) {
  auto yd = y->dimensions();
  Geometry g;
  if (auto e = MakeGeometry(x, w, yd[1], yd[2], L, sh, sw, pt, pl, &g); e.failure()) return e;
  return ForFloatType(x.element_type(), "igc_primary_forward", [&](auto t) {
    using T = decltype(t);
    Forward(pool, g, x.typed_data<T>(), w.typed_data<T>(), y->typed_data<T>());
  });
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                          ffi::Result<ffi::AnyBuffer> dw, int64_t L, int64_t sh, int64_t sw,
                          int64_t pt, int64_t pl) {
  auto dyd = dy.dimensions();
  Geometry g;
  if (auto e = MakeGeometry(x, *dw, dyd[1], dyd[2], L, sh, sw, pt, pl, &g); e.failure()) return e;
  return ForFloatType(x.element_type(), "igc_primary_kernel_grad", [&](auto t) {
    using T = decltype(t);
    KernelGrad(pool, g, x.typed_data<T>(), dy.typed_data<T>(), dw->typed_data<T>());
  });
}

// ---- dQ = y1ᵀ · dy for the C×C mixing matrix (shuffle, secondary conv, shuffle) of an IGC layer:
// a contraction over all N·H·W pixels that XLA's CPU dot runs through a transposed copy of both
// operands. Register tiles of 4 rows × 2 vectors accumulate over blocks of pixels; partial sums
// per fixed chunk of images (not per thread) keep the result reproducible.

template <typename T>
void OuterTile(const T* a, const T* b, int64_t p0, int64_t p1, int64_t C, int64_t D, int64_t c,
               int64_t d, T* out) {
  using Ln = Lanes<T>;
  constexpr int R = 4;
  typename Ln::Vec acc[R][2] = {};
  for (int64_t p = p0; p < p1; ++p) {
    const auto b0 = Ln::Load(b + p * D + d), b1 = Ln::Load(b + p * D + d + Ln::V);
    const T* ap = a + p * C + c;
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      acc[r][0] += ap[r] * b0;
      acc[r][1] += ap[r] * b1;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) {
      T* o = out + (c + r) * D + d + h * Ln::V;
      Ln::Store(o, Ln::Load(o) + acc[r][h]);
    }
}

// out (C×D) = Σ_p a[p, :]ᵀ b[p, :] over pixels [0, P).
template <typename T>
void OuterChunk(const T* a, const T* b, int64_t P, int64_t C, int64_t D, T* out) {
  constexpr int64_t kBlock = 128;  // pixels per pass: a and b blocks stay in L2
  const int64_t W2 = 2 * Lanes<T>::V, Cr = C - C % 4, Dv = D - D % W2;
  std::fill(out, out + C * D, T(0));
  for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
    const int64_t p1 = std::min(P, p0 + kBlock);
    for (int64_t c = 0; c < Cr; c += 4)
      for (int64_t d = 0; d < Dv; d += W2) OuterTile(a, b, p0, p1, C, D, c, d, out);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t d = (c < Cr ? Dv : 0); d < D; ++d) {
        T s = 0;
        for (int64_t p = p0; p < p1; ++p) s += a[p * C + c] * b[p * D + d];
        out[c * D + d] += s;
      }
  }
}

// Sums fn(first pixel, pixel count, out) over chunks of images into out (K values): about 1024
// pixels per chunk and at least 8 chunks when there are 8 images, whatever the thread count, and
// the chunks' partial sums added in order, so the result is reproducible.
template <typename T, typename F>
void ChunkedSum(ffi::ThreadPool& pool, int64_t N, int64_t HW, int64_t K, T* out, const F& fn) {
  const int64_t per_chunk = std::max<int64_t>(1, std::min(1024 / HW, (N + 7) / 8));
  const int64_t chunks = (N + per_chunk - 1) / per_chunk;
  std::vector<T> partial(chunks * K);
  ParallelFor(pool, chunks, [&](int64_t k) {
    const int64_t n0 = k * per_chunk, n1 = std::min(N, n0 + per_chunk);
    fn(n0 * HW, (n1 - n0) * HW, partial.data() + k * K);
  });
  SumInOrder(partial, chunks, K, out);
}

template <typename T>
void Outer(ffi::ThreadPool& pool, const T* a, const T* b, int64_t N, int64_t HW, int64_t C,
           int64_t D, T* out) {
  ChunkedSum(pool, N, HW, C * D, out, [&](int64_t p0, int64_t P, T* part) {
    OuterChunk(a + p0 * C, b + p0 * D, P, C, D, part);
  });
}

ffi::Error OuterImpl(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b,
                     ffi::Result<ffi::AnyBuffer> out) {
  auto ad = a.dimensions();
  auto bd = b.dimensions();
  if (ad.size() != 4 || bd.size() != 4 || ad[0] != bd[0] || ad[1] * ad[2] != bd[1] * bd[2])
    return ffi::Error::InvalidArgument("igc_mixing_grad: a and b must be NHWC with equal N, H, W");
  if (a.element_type() != b.element_type())
    return ffi::Error::InvalidArgument("igc_mixing_grad: a and b must share a dtype");
  const int64_t N = ad[0], HW = ad[1] * ad[2], C = ad[3], D = bd[3];
  return ForFloatType(a.element_type(), "igc_mixing_grad", [&](auto t) {
    using T = decltype(t);
    Outer(pool, a.typed_data<T>(), b.typed_data<T>(), N, HW, C, D, out->typed_data<T>());
  });
}

// ---- The secondary conv with both shuffles when every primary group has M = C/L channels
// (the paper's IGC-L·M nets): output channel o·M + g takes input channel g of every primary group,
//   y[p, o·M + g] = Σ_t wt[t][o·M + g] · y1[p, t·M + g],   wt = shuffle(secondary[0, 0], M),
// i.e. C/M multiply-adds per output instead of the C of the dense mixing matrix. Along a vector
// of outputs the inputs are one group's M channels repeated (a broadcast); the input gradient is
// the same product with wt's blocks transposed (Python side), the weight gradient below.

// Lanes c0 .. c0 + V - 1 of the M channels at src repeated: lane u holds src[(c0 + u) mod M].
// The M values are broadcast as one 4-, 8- or 16-byte word (a lane-by-lane build of the same
// vector made the kernel 6× slower); M·sizeof(T) ≥ 32 bytes is a plain load.
template <typename T, int M>
inline typename Lanes<T>::Vec Repeat(const T* src, int64_t c0) {
  using Vec = typename Lanes<T>::Vec;
  constexpr int64_t V = Lanes<T>::V, bytes = M * sizeof(T);
  if constexpr (bytes >= sizeof(Vec)) {
    return Lanes<T>::Load(src + c0 % M);
  } else if constexpr (bytes == 16) {
    typedef uint64_t Words __attribute__((vector_size(sizeof(Vec))));
    uint64_t w[2];
    std::memcpy(w, src, 16);
    Words v = {w[0], w[1], w[0], w[1]};
    return (Vec)v;  // a GCC vector cast reinterprets the bits
  } else {
    typedef typename std::conditional<bytes == 8, uint64_t, uint32_t>::type Word;
    typedef Word Words __attribute__((vector_size(sizeof(Vec))));
    Word w;
    std::memcpy(&w, src, bytes);
    Words v = Words{} + w;
    return (Vec)v;  // a GCC vector cast reinterprets the bits
  }
  static_assert(V > 0);
}

// NB vectors of outputs [c0, c0 + NB·V) of one pixel, accumulated in registers.
template <typename T, int M, int NB>
inline void SecondaryBlock(const T* x, const T* wt, int64_t C, int64_t c0, T* y) {
  using Ln = Lanes<T>;
  typename Ln::Vec acc[NB] = {};
  for (int64_t t = 0; t < C / M; ++t)
    for (int b = 0; b < NB; ++b)
      acc[b] += Ln::Load(wt + t * C + c0 + b * Ln::V) * Repeat<T, M>(x + t * M, c0 + b * Ln::V);
  for (int b = 0; b < NB; ++b) Ln::Store(y + c0 + b * Ln::V, acc[b]);
}

template <typename T, int M>
void SecondaryPixels(const T* x, const T* wt, int64_t P, int64_t C, T* y) {
  constexpr int NB = 6;
  const int64_t V = Lanes<T>::V, Cv = C - C % V;
  for (int64_t p = 0; p < P; ++p) {
    const T* xp = x + p * C;
    T* yp = y + p * C;
    int64_t c0 = 0;
    for (; c0 + NB * V <= Cv; c0 += NB * V) SecondaryBlock<T, M, NB>(xp, wt, C, c0, yp);
    for (; c0 < Cv; c0 += V) SecondaryBlock<T, M, 1>(xp, wt, C, c0, yp);
    for (int64_t c = Cv; c < C; ++c) {
      T s = 0;
      for (int64_t t = 0; t < C / M; ++t) s += wt[t * C + c] * xp[t * M + c % M];
      yp[c] = s;
    }
  }
}

// dwt[t][c0, c0 + NB·V) += Σ_{p in [p0, p1)} y1[p, t·M + c mod M] · dy[p, c], in registers.
template <typename T, int M, int NB>
inline void SecondaryWeightGradBlock(const T* x, const T* dy, int64_t p0, int64_t p1, int64_t C,
                                     int64_t t, int64_t c0, T* dwt) {
  using Ln = Lanes<T>;
  typename Ln::Vec acc[NB] = {};
  for (int64_t p = p0; p < p1; ++p)
    for (int b = 0; b < NB; ++b)
      acc[b] += Repeat<T, M>(x + p * C + t * M, c0 + b * Ln::V) * Ln::Load(dy + p * C + c0 + b * Ln::V);
  for (int b = 0; b < NB; ++b) {
    T* d = dwt + t * C + c0 + b * Ln::V;
    Ln::Store(d, Ln::Load(d) + acc[b]);
  }
}

// dwt = Σ over P pixels of y1[p, t·M + c mod M] · dy[p, c], in blocks of pixels that stay in L1.
template <typename T, int M>
void SecondaryWeightGradPixels(const T* x, const T* dy, int64_t P, int64_t C, T* dwt) {
  constexpr int NB = 6;
  constexpr int64_t kBlock = 32;
  const int64_t V = Lanes<T>::V, Cv = C - C % V;
  std::fill(dwt, dwt + (C / M) * C, T(0));
  for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
    const int64_t p1 = std::min(P, p0 + kBlock);
    for (int64_t t = 0; t < C / M; ++t) {
      int64_t c0 = 0;
      for (; c0 + NB * V <= Cv; c0 += NB * V)
        SecondaryWeightGradBlock<T, M, NB>(x, dy, p0, p1, C, t, c0, dwt);
      for (; c0 < Cv; c0 += V) SecondaryWeightGradBlock<T, M, 1>(x, dy, p0, p1, C, t, c0, dwt);
      for (int64_t c = Cv; c < C; ++c)
        for (int64_t p = p0; p < p1; ++p) dwt[t * C + c] += x[p * C + t * M + c % M] * dy[p * C + c];
    }
  }
}

// Checks x (N, H, W, C), a second array of x's dtype (wt or dy) and the weights' (C/M, C)
// dimensions wd; sets M = C / (rows of wt), which must be 1, 2, 4 or 8.
ffi::Error CheckSecondary(const std::string& name, const ffi::AnyBuffer& x,
                          const ffi::AnyBuffer& other, ffi::AnyBuffer::Dimensions wd, int* M) {
  auto xd = x.dimensions();
  if (xd.size() != 4 || wd.size() != 2 || wd[1] != xd[3] || x.element_type() != other.element_type())
    return ffi::Error::InvalidArgument(name + ": x (N, H, W, C) and weights (C/M, C) of one dtype");
  *M = wd[0] > 0 && wd[1] % wd[0] == 0 ? static_cast<int>(wd[1] / wd[0]) : 0;
  if (*M != 1 && *M != 2 && *M != 4 && *M != 8)
    return ffi::Error::InvalidArgument(name + ": M = C / (C/M) must be 1, 2, 4 or 8");
  return ffi::Error::Success();
}

ffi::Error SecondaryForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer wt,
                                ffi::Result<ffi::AnyBuffer> y) {
  int M;
  if (auto e = CheckSecondary("igc_secondary_forward", x, wt, wt.dimensions(), &M); e.failure())
    return e;
  auto xd = x.dimensions();
  const int64_t N = xd[0], HW = xd[1] * xd[2], C = xd[3];
  return ForFloatType(x.element_type(), "igc_secondary_forward", [&](auto type) {
    using T = decltype(type);
    const T* xs = x.typed_data<T>();
    const T* w = wt.typed_data<T>();
    T* ys = y->typed_data<T>();
    DispatchM(M, [&](auto m) {
      ParallelFor(pool, N, [&](int64_t n) {
        SecondaryPixels<T, decltype(m)::value>(xs + n * HW * C, w, HW, C, ys + n * HW * C);
      });
    });
  });
}

ffi::Error SecondaryWeightGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                                   ffi::Result<ffi::AnyBuffer> dwt) {
  int M;
  auto wd = dwt->dimensions();
  if (auto e = CheckSecondary("igc_secondary_weight_grad", x, dy, wd, &M); e.failure()) return e;
  auto xd = x.dimensions();
  const int64_t N = xd[0], HW = xd[1] * xd[2], C = xd[3];
  return ForFloatType(x.element_type(), "igc_secondary_weight_grad", [&](auto type) {
    using T = decltype(type);
    const T* xs = x.typed_data<T>();
    const T* ds = dy.typed_data<T>();
    DispatchM(M, [&](auto m) {
      ChunkedSum(pool, N, HW, wd[0] * C, dwt->typed_data<T>(), [&](int64_t p0, int64_t P, T* part) {
        SecondaryWeightGradPixels<T, decltype(m)::value>(xs + p0 * C, ds + p0 * C, P, C, part);
      });
    });
  });
}

}  // namespace

// Both primary-conv handlers: two arrays in, one out, and the layer's geometry.
static auto PrimaryConvBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attr<int64_t>("L")
      .Attr<int64_t>("sh")
      .Attr<int64_t>("sw")
      .Attr<int64_t>("pt")
      .Attr<int64_t>("pl");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(IgcPrimaryForward, PrimaryForwardImpl, PrimaryConvBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(IgcPrimaryKernelGrad, KernelGradImpl, PrimaryConvBinding());

// The other handlers: two arrays in, one out.
static auto TwoArraysBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(IgcMixingGrad, OuterImpl, TwoArraysBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(IgcSecondaryForward, SecondaryForwardImpl, TwoArraysBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(IgcSecondaryWeightGrad, SecondaryWeightGradImpl, TwoArraysBinding());
