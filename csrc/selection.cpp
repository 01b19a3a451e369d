// Exact pair-selection rules (mirrored line by line by fastalign/explore/selection.py):
//   mean[n]   = (sum over e, in order e = 0..E-1, of double(R[n,e])) / E
//   c[n,e]    = double(R[n,e]) - mean[n]                       (per-response centred rewards)
//   V(a, b)   = (sum over e, in order, of (c[a,e] - c[b,e])^2) / E
//             = the population variance over heads of R[e,a] - R[e,b], in its centred form.
// Argmax/argmin ties go to the lowest index; pair ties to the lowest (first, second) in row-major
// order. Only IEEE add/sub/mul/div in a fixed order and no FMA (neither baseline x86-64 nor the AVX2
// clone enables it; C++17 ISO mode keeps contraction off), so numpy reproduces every bit.
#include "selection.h"

#include <cmath>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <utility>

#if defined(__SSE2__) || defined(_M_X64)
#include <immintrin.h>
#define FASTALIGN_SSE 1
#else
#define FASTALIGN_SSE 0
#endif

namespace fastalign {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// The hot loops are also built for AVX2 and picked at load time when the CPU has it. The AVX2
// target does not include FMA, so the rounding stays identical to the baseline build.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32)
#define FASTALIGN_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#define FASTALIGN_AVX2_PATH 1
#else
#define FASTALIGN_SIMD_CLONES
#define FASTALIGN_AVX2_PATH 0
#endif

#if FASTALIGN_AVX2_PATH
// Checked once at load; __builtin_cpu_init first, since static initialisers of a shared library
// may run before libgcc has filled in the CPU model. FASTALIGN_NO_AVX2=1 takes the baseline paths
// of the hand-written AVX2 code (the tests run them on AVX2 machines too).
bool cpu_has_avx2() {
  __builtin_cpu_init();
  const char* off = std::getenv("FASTALIGN_NO_AVX2");
  return __builtin_cpu_supports("avx2") && !(off && *off && std::strcmp(off, "0") != 0);
}
const bool kHaveAvx2 = cpu_has_avx2();

// Bit j set where ids[n + j] != key, for the 4 ids from n (every AVX2 CPU has POPCNT too).
__attribute__((target("avx2,popcnt"))) inline unsigned others_in_block(const int64_t* ids, __m256i key) {
  const __m256i same = _mm256_cmpeq_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids)), key);
  return ~static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(same))) & 0xFu;
}

// How many of ids[0..count) differ from key.
__attribute__((target("avx2,popcnt"))) int64_t count_others_avx2(const int64_t* ids, int64_t count,
                                                                 int64_t key) {
  const __m256i k = _mm256_set1_epi64x(key);
  int64_t others = 0, n = 0;
  for (; n + 4 <= count; n += 4) others += __builtin_popcount(others_in_block(ids + n, k));
  for (; n < count; ++n) others += ids[n] != key ? 1 : 0;
  return others;
}

// The index of the k-th (0-based) id differing from key, or -1 when there are not that many.
__attribute__((target("avx2,popcnt"))) int64_t kth_other_avx2(const int64_t* ids, int64_t count,
                                                              int64_t key, int64_t k) {
  const __m256i key4 = _mm256_set1_epi64x(key);
  int64_t n = 0;
  for (; n + 4 <= count; n += 4) {
    unsigned others = others_in_block(ids + n, key4);
    const int64_t in_block = __builtin_popcount(others);
    if (k < in_block) {
      for (; k > 0; --k) others &= others - 1;  // drop the lowest set bits before the k-th
      return n + __builtin_ctz(others);
    }
    k -= in_block;
  }
  for (; n < count; ++n)
    if (ids[n] != key && k-- == 0) return n;
  return -1;
}
#endif

// A view of one prompt's rewards [N, E] and identity ids [N].
class Row {
 public:
  Row(const float* r, const int64_t* id, int64_t n, int64_t e) : r_(r), id_(id), n_(n), e_(e) {}

  double at(int64_t n, int64_t e) const { return static_cast<double>(r_[n * e_ + e]); }
  bool same(int64_t a, int64_t b) const { return id_ ? id_[a] == id_[b] : a == b; }

  bool has_two_distinct() const {
    for (int64_t n = 1; n < n_; ++n)
      if (!same(0, n)) return true;
    return false;
  }

  // Lowest-index argmax of head e over all responses (best value kept in a register: no reload).
  int64_t argmax_head(int64_t e) const {
    int64_t best = 0;
    float best_value = r_[e];
    for (int64_t n = 1; n < n_; ++n) {
      const float value = r_[n * e_ + e];
      best = value > best_value ? n : best;
      best_value = value > best_value ? value : best_value;
    }
    return best;
  }

  // Lowest-index argmax of head e over responses not identical to `first`.
  int64_t argmax_head_excluding(int64_t e, int64_t first) const {
    int64_t best = -1;
    for (int64_t n = 0; n < n_; ++n) {
      if (same(n, first)) continue;
      if (best < 0 || r_[n * e_ + e] > r_[best * e_ + e]) best = n;
    }
    return best;
  }

  // The k-th (0-based, ascending index) response not identical to `first`.
  int64_t kth_excluding(int64_t k, int64_t first) const {
    if (!id_) return k < first ? k : k + 1;
#if FASTALIGN_AVX2_PATH
    if (kHaveAvx2) return kth_other_avx2(id_, n_, id_[first], k);
#endif
    for (int64_t n = 0; n < n_; ++n) {
      if (same(n, first)) continue;
      if (k-- == 0) return n;
    }
    return -1;
  }

  int64_t count_excluding(int64_t first) const {
    if (!id_) return n_ - 1;
#if FASTALIGN_AVX2_PATH
    if (kHaveAvx2) return count_others_avx2(id_, n_, id_[first]);
#endif
    const int64_t id = id_[first];
    int64_t count = 0;
    for (int64_t n = 0; n < n_; ++n) count += id_[n] != id ? 1 : 0;
    return count;
  }

  const int64_t* ids() const { return id_; }
  const float* data() const { return r_; }
  int64_t responses() const { return n_; }
  int64_t heads() const { return e_; }

 private:
  const float* r_;
  const int64_t* id_;
  int64_t n_, e_;
};

// Rows handled together by the uncertainty kernel: one vector of 4 doubles spans the group.
constexpr int64_t kGroup = 4;

// v[b] = V(a, b) for every b, from centred rewards c [E, P] (P = N rounded up to a multiple of 4,
// zero padded, so the vectorised inner loop has no scalar tail). Heads are the outer loop, so each
// b sums its terms in head order.
FASTALIGN_SIMD_CLONES
void variances_against(const double* __restrict c, double* __restrict v, int64_t n_padded,
                       int64_t e_count, int64_t a) {
  for (int64_t b = 0; b < n_padded; ++b) v[b] = 0.0;
  for (int64_t e = 0; e < e_count; ++e) {
    const double* __restrict ce = c + e * n_padded;
    const double ca = ce[a];
    for (int64_t b = 0; b < n_padded; ++b) {
      const double t = ca - ce[b];
      v[b] += t * t;
    }
  }
  const double denom = static_cast<double>(e_count);
  for (int64_t b = 0; b < n_padded; ++b) v[b] /= denom;
}

// Four doubles as one value: a group's 4 rows in the uncertainty kernel, or 4 responses in the
// head-major loops. GCC/Clang lower it to whatever the target has (2 SSE2 or 1 AVX register);
// every lane does exactly the scalar operations, so the results are the same bits.
#pragma GCC diagnostic ignored "-Wpsabi"  // Lanes never crosses a non-inlined call boundary
typedef double Lanes __attribute__((vector_size(32)));

inline Lanes load_lanes(const double* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_lanes(double* p, Lanes v) { std::memcpy(p, &v, sizeof v); }
inline Lanes load_widened(const float* p) {
  Lanes v;  // element-wise (GCC 12 splits __builtin_convertvector into two halves; this is one op)
  for (int k = 0; k < 4; ++k) v[k] = static_cast<double>(p[k]);
  return v;
}

// v[(a * N + b) * 4 + k] = V(a, b) of row k of a group, for every a < b, from the group's centred
// rewards interleaved as c [E, N, 4]. The uncertainty rule needs all N(N-1)/2 pairs, and pair rows
// are short at N ~ 20: spanning 4 prompts with each vector keeps every step a full vector. Heads are
// the innermost loop with the sums in registers (each pair still adds its terms in head order), and
// four b's run side by side so the adds of independent pairs overlap.
FASTALIGN_SIMD_CLONES
void group_pair_variances(const double* __restrict c, double* __restrict v, int64_t n_count,
                          int64_t e_count) {
  const int64_t stride = n_count * kGroup;  // from head e to head e + 1
  const Lanes denom = Lanes{} + static_cast<double>(e_count);
  for (int64_t a = 0; a + 1 < n_count; ++a) {
    double* __restrict row = v + a * n_count * kGroup;
    int64_t b = a + 1;
    for (; b + 4 <= n_count; b += 4) {
      Lanes s0{}, s1{}, s2{}, s3{};
      const double* __restrict ce = c;
      for (int64_t e = 0; e < e_count; ++e, ce += stride) {
        const Lanes ca = load_lanes(ce + a * kGroup);
        const Lanes t0 = ca - load_lanes(ce + b * kGroup);
        const Lanes t1 = ca - load_lanes(ce + (b + 1) * kGroup);
        const Lanes t2 = ca - load_lanes(ce + (b + 2) * kGroup);
        const Lanes t3 = ca - load_lanes(ce + (b + 3) * kGroup);
        s0 += t0 * t0;
        s1 += t1 * t1;
        s2 += t2 * t2;
        s3 += t3 * t3;
      }
      store_lanes(row + b * kGroup, s0 / denom);
      store_lanes(row + (b + 1) * kGroup, s1 / denom);
      store_lanes(row + (b + 2) * kGroup, s2 / denom);
      store_lanes(row + (b + 3) * kGroup, s3 / denom);
    }
    for (; b < n_count; ++b) {
      Lanes s0{};
      const double* __restrict ce = c;
      for (int64_t e = 0; e < e_count; ++e, ce += stride) {
        const Lanes t0 = load_lanes(ce + a * kGroup) - load_lanes(ce + b * kGroup);
        s0 += t0 * t0;
      }
      store_lanes(row + b * kGroup, s0 / denom);
    }
  }
}

// t[e * P + n] = R[n, e]: one row turned head-major (P = N rounded up to a multiple of 4, padding
// zeroed), so per-response sums over heads run down contiguous vectors. 4x4 blocks move through
// SSE registers; the copy is exact.
FASTALIGN_SIMD_CLONES
void transpose_row(const float* __restrict r, float* __restrict t, int64_t n_count, int64_t n_padded,
                   int64_t e_count) {
  int64_t n = 0;
#if FASTALIGN_SSE
  for (; n + 4 <= n_count; n += 4) {
    const float* r0 = r + n * e_count;
    int64_t e = 0;
    for (; e + 4 <= e_count; e += 4) {
      __m128 x0 = _mm_loadu_ps(r0 + e), x1 = _mm_loadu_ps(r0 + e_count + e);
      __m128 x2 = _mm_loadu_ps(r0 + 2 * e_count + e), x3 = _mm_loadu_ps(r0 + 3 * e_count + e);
      _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
      _mm_storeu_ps(t + e * n_padded + n, x0);
      _mm_storeu_ps(t + (e + 1) * n_padded + n, x1);
      _mm_storeu_ps(t + (e + 2) * n_padded + n, x2);
      _mm_storeu_ps(t + (e + 3) * n_padded + n, x3);
    }
    for (; e < e_count; ++e)
      for (int64_t k = 0; k < 4; ++k) t[e * n_padded + n + k] = r0[k * e_count + e];
  }
#endif
  for (; n < n_count; ++n)
    for (int64_t e = 0; e < e_count; ++e) t[e * n_padded + n] = r[n * e_count + e];
  for (; n < n_padded; ++n)
    for (int64_t e = 0; e < e_count; ++e) t[e * n_padded + n] = 0.0f;
}

// Sums over heads, in order, of 16 (or, for the last block, 4) adjacent responses of the
// head-major row, as means. Separate accumulators (not an array) so they stay in registers.
inline void means_block16(const float* __restrict t, double* __restrict mean, int64_t n_padded,
                          int64_t e_count, Lanes denom) {
  Lanes s0{}, s1{}, s2{}, s3{};
  for (int64_t e = 0; e < e_count; ++e, t += n_padded) {
    s0 += load_widened(t);
    s1 += load_widened(t + 4);
    s2 += load_widened(t + 8);
    s3 += load_widened(t + 12);
  }
  store_lanes(mean, s0 / denom);
  store_lanes(mean + 4, s1 / denom);
  store_lanes(mean + 8, s2 / denom);
  store_lanes(mean + 12, s3 / denom);
}

inline void means_block4(const float* __restrict t, double* __restrict mean, int64_t n_padded,
                         int64_t e_count, Lanes denom) {
  Lanes s0{};
  for (int64_t e = 0; e < e_count; ++e, t += n_padded) s0 += load_widened(t);
  store_lanes(mean, s0 / denom);
}

// mean[n] for n < P from the head-major row: each response sums its heads in order e = 0..E-1
// (lanes run side by side; no lane's order changes). Rows of a chunk are independent, so their
// chains of adds overlap.
FASTALIGN_SIMD_CLONES
void means_head_major(const float* __restrict t, double* __restrict mean, int64_t n_padded,
                      int64_t e_count) {
  const Lanes denom = Lanes{} + static_cast<double>(e_count);
  int64_t n = 0;
  for (; n + 16 <= n_padded; n += 16) means_block16(t + n, mean + n, n_padded, e_count, denom);
  for (; n < n_padded; n += 4) means_block4(t + n, mean + n, n_padded, e_count, denom);
}

#if FASTALIGN_AVX2_PATH
// 4 responses x 4 heads: out[j] holds head e + j of responses p0..p3 (one per lane), as doubles.
// Half a transpose (unpack) then widening and 128-bit lane swaps: no trip through memory.
__attribute__((target("avx2"))) inline void widen_block(const float* p0, const float* p1, const float* p2,
                                                       const float* p3, int64_t e, __m256d out[4]) {
  const __m128 x0 = _mm_loadu_ps(p0 + e), x1 = _mm_loadu_ps(p1 + e);
  const __m128 x2 = _mm_loadu_ps(p2 + e), x3 = _mm_loadu_ps(p3 + e);
  const __m256d a = _mm256_cvtps_pd(_mm_unpacklo_ps(x0, x1));  // heads e, e+1 of responses 0, 1
  const __m256d b = _mm256_cvtps_pd(_mm_unpacklo_ps(x2, x3));  // heads e, e+1 of responses 2, 3
  const __m256d c = _mm256_cvtps_pd(_mm_unpackhi_ps(x0, x1));  // heads e+2, e+3 of responses 0, 1
  const __m256d d = _mm256_cvtps_pd(_mm_unpackhi_ps(x2, x3));
  out[0] = _mm256_permute2f128_pd(a, b, 0x20);
  out[1] = _mm256_permute2f128_pd(a, b, 0x31);
  out[2] = _mm256_permute2f128_pd(c, d, 0x20);
  out[3] = _mm256_permute2f128_pd(c, d, 0x31);
}

// Sums over heads of 4 * chains responses, response k's E floats at row(k): one vector chain of adds
// per 4 responses (chains run side by side to hide the add latency), each response adding its heads
// in order e = 0..E-1.
template <int chains, typename RowAt>
__attribute__((target("avx2"))) inline void sum_heads_avx2(RowAt row, int64_t e_count, __m256d s[chains]) {
  for (int c = 0; c < chains; ++c) s[c] = _mm256_setzero_pd();
  int64_t e = 0;
  for (; e + 4 <= e_count; e += 4) {
    for (int c = 0; c < chains; ++c) {
      __m256d h[4];
      widen_block(row(4 * c), row(4 * c + 1), row(4 * c + 2), row(4 * c + 3), e, h);
      for (int j = 0; j < 4; ++j) s[c] = _mm256_add_pd(s[c], h[j]);
    }
  }
  for (; e < e_count; ++e)
    for (int c = 0; c < chains; ++c)
      s[c] = _mm256_add_pd(s[c], _mm256_set_pd(row(4 * c + 3)[e], row(4 * c + 2)[e], row(4 * c + 1)[e],
                                               row(4 * c)[e]));
}

// out[i] = sum over heads, in order, of double(p[i][e]) (the picked responses of passive_scores).
__attribute__((target("avx2"))) void sum_picked_avx2(const float* const* p, int64_t count,
                                                     int64_t e_count, double* out) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    __m256d s[2];
    sum_heads_avx2<2>([p, i](int k) { return p[i + k]; }, e_count, s);
    _mm256_storeu_pd(out + i, s[0]);
    _mm256_storeu_pd(out + i + 4, s[1]);
  }
  for (; i < count; ++i) {
    double s0 = 0.0;
    for (int64_t e = 0; e < e_count; ++e) s0 += static_cast<double>(p[i][e]);
    out[i] = s0;
  }
}

// The same means as transpose_row + means_head_major (each response adds its heads in order e =
// 0..E-1, then divides by E) of `count` consecutive responses, straight from the rewards. Rows are
// contiguous, so a chunk's responses run as one sequence regardless of row boundaries: 16 per pass
// in four independent chains (one chain waits ~3 cycles per add), then 4 at a time, then singly.
__attribute__((target("avx2"))) void means_of_responses_avx2(const float* __restrict r,
                                                             double* __restrict mean, int64_t count,
                                                             int64_t e_count) {
  const __m256d denom = _mm256_set1_pd(static_cast<double>(e_count));
  int64_t n = 0;
  for (; n + 16 <= count; n += 16) {
    __m256d s[4];
    const float* first = r + n * e_count;
    sum_heads_avx2<4>([first, e_count](int k) { return first + k * e_count; }, e_count, s);
    for (int c = 0; c < 4; ++c) _mm256_storeu_pd(mean + n + 4 * c, _mm256_div_pd(s[c], denom));
  }
  for (; n + 4 <= count; n += 4) {
    __m256d s[1];
    const float* first = r + n * e_count;
    sum_heads_avx2<1>([first, e_count](int k) { return first + k * e_count; }, e_count, s);
    _mm256_storeu_pd(mean + n, _mm256_div_pd(s[0], denom));
  }
  for (; n < count; ++n) {
    double s0 = 0.0;
    for (int64_t e = 0; e < e_count; ++e) s0 += static_cast<double>(r[n * e_count + e]);
    mean[n] = s0 / static_cast<double>(e_count);
  }
}

#endif

// c[e * P + n] = t[e * P + n] - mean[n], the head-major centred rewards.
FASTALIGN_SIMD_CLONES
void centre_head_major(const float* __restrict t, const double* __restrict mean, double* __restrict c,
                       int64_t n_padded, int64_t e_count) {
  for (int64_t e = 0; e < e_count; ++e)
    for (int64_t n = 0; n < n_padded; ++n)
      c[e * n_padded + n] = static_cast<double>(t[e * n_padded + n]) - mean[n];
}

bool averages_every_response(Strategy strategy) {
  return strategy == Strategy::BaiTs || strategy == Strategy::Uncertainty ||
         strategy == Strategy::BestWorst || strategy == Strategy::BestOfN;
}

// True when no value is NaN or +-inf (exponent bits not all ones); branch-free, vectorises.
FASTALIGN_SIMD_CLONES
bool all_finite(const double* __restrict x, int64_t count) {
  uint64_t bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    uint64_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    bad |= static_cast<uint64_t>((bits & 0x7FF0000000000000ULL) == 0x7FF0000000000000ULL);
  }
  return bad == 0;
}

// Rows whose means are computed in one pass before any of them is selected: the per-row chains of
// adds overlap across rows instead of each row's selection waiting on its own means.
constexpr int64_t kChunk = 16;  // a multiple of kGroup

// Per-call scratch buffers, reused across rows to keep allocation out of the hot loop. Rules that
// average every response turn each row of a chunk head-major (t) and compute its means up front;
// per-response sums over heads and the centring then run over contiguous responses.
struct Scratch {
  int64_t n_count, n_padded, e_count;
  bool keep_rows;                          // whether the rules read t (bai-ts, uncertainty)
  std::vector<float> t;                    // [kChunk, E, P] the chunk's rows, head-major, zero padded
  std::vector<double> means;               // [kChunk, mean_stride]
  int64_t mean_stride;                     // P, or N where the means come straight from the rows
  const float* row_t = nullptr;            // the current row's slices of t and means
  const double* mean = nullptr;
  std::vector<double> centred, acc;        // [E, P], [P] (bai-ts; centred also for uncertainty)
  std::vector<double> grouped, group_acc;  // [E, N, 4], [N, N, 4]            (uncertainty)
  std::vector<int64_t> order;              // ee-ts: the other heads, shuffled
  std::vector<double> masked;              // [N] values with unavailable responses at -inf

  Scratch(int64_t b, int64_t n, int64_t e, Strategy strategy)
      : n_count(n), n_padded((n + 3) & ~int64_t{3}), e_count(e),
        keep_rows(strategy == Strategy::BaiTs || strategy == Strategy::Uncertainty),
        mean_stride(means_from_rows() ? n : n_padded), order(e > 0 ? e - 1 : 0), masked(n) {
    if (averages_every_response(strategy)) {
      const int64_t rows = std::min(b, kChunk);
      if (!means_from_rows()) t.resize(rows * e * n_padded);
      means.resize(rows * n_padded);
    }
    if (strategy == Strategy::BaiTs || strategy == Strategy::Uncertainty) centred.assign(n_padded * e, 0.0);
    if (strategy == Strategy::BaiTs) acc.assign(n_padded, 0.0);
    if (strategy == Strategy::Uncertainty) {
      grouped.assign(e * n * kGroup, 0.0);
      group_acc.assign(n * n * kGroup, 0.0);
    }
  }

  // Rules that read only the means skip the head-major copy where AVX2 can sum the rows directly.
  bool means_from_rows() const {
#if FASTALIGN_AVX2_PATH
    return !keep_rows && kHaveAvx2;
#else
    return false;
#endif
  }

  // Means of rows [b0, b1) (at most kChunk). NaN or inf anywhere in a row makes one of its means
  // non-finite (float32 values cannot overflow a float64 sum), so the return value validates the
  // rows at no extra pass over the data: false when some value is not finite.
  bool fill_chunk(const float* rewards, int64_t b0, int64_t b1) {
    const int64_t row_size = n_count * e_count, t_size = e_count * n_padded;
#if FASTALIGN_AVX2_PATH
    if (means_from_rows()) {
      means_of_responses_avx2(rewards + b0 * row_size, means.data(), (b1 - b0) * n_count, e_count);
      return all_finite(means.data(), (b1 - b0) * n_count);
    }
#endif
    for (int64_t b = b0; b < b1; ++b) {
      float* tb = t.data() + (b - b0) * t_size;
      transpose_row(rewards + b * row_size, tb, n_count, n_padded, e_count);
      means_head_major(tb, means.data() + (b - b0) * n_padded, n_padded, e_count);
    }
    return all_finite(means.data(), (b1 - b0) * n_padded);
  }

  // Point at row k of the chunk.
  void use_row(int64_t k) {
    row_t = t.data() + k * e_count * n_padded;
    mean = means.data() + k * mean_stride;
  }

  void fill_centred() { centre_head_major(row_t, mean, centred.data(), n_padded, e_count); }

  // Lane k of the uncertainty group: the current row's centred values, interleaved [E, N, 4].
  void fill_grouped(int64_t k) {
    fill_centred();
    const double* __restrict c = centred.data();
    double* __restrict g = grouped.data();
    for (int64_t e = 0; e < e_count; ++e)
      for (int64_t n = 0; n < n_count; ++n) g[(e * n_count + n) * kGroup + k] = c[e * n_padded + n];
  }

  double group_variance(int64_t a, int64_t b, int64_t k) const {
    return group_acc[(a * n_count + b) * kGroup + k];
  }
};

struct Choice {
  int64_t first = -1, second = -1, head1 = -1, head2 = -1;
  double score = std::numeric_limits<double>::quiet_NaN();
};

Choice mean_margin(const Scratch& s, int64_t first, int64_t second) {
  Choice c;
  c.first = first;
  c.second = second;
  c.score = s.mean[first] - s.mean[second];
  return c;
}

// The pair only; its score comes from passive_scores once the whole chunk is picked.
Choice select_passive(const Row& row, RowRng rng) {
  Choice c;
  c.first = rng.below(row.responses());
  c.second = row.kth_excluding(rng.below(row.count_excluding(c.first)), c.first);
  return c;
}

// out[i] = sum over heads, in order e = 0..E-1, of double(p[i][e]). Eight responses at a time: each
// sum is one chain of dependent adds, so running eight side by side hides the add latency.
void sum_heads(const float* const* p, int64_t count, int64_t e_count, double* out) {
#if FASTALIGN_AVX2_PATH
  if (kHaveAvx2) return sum_picked_avx2(p, count, e_count, out);
#endif
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const float *p0 = p[i], *p1 = p[i + 1], *p2 = p[i + 2], *p3 = p[i + 3];
    const float *p4 = p[i + 4], *p5 = p[i + 5], *p6 = p[i + 6], *p7 = p[i + 7];
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0, s5 = 0.0, s6 = 0.0, s7 = 0.0;
    for (int64_t e = 0; e < e_count; ++e) {
      s0 += static_cast<double>(p0[e]);
      s1 += static_cast<double>(p1[e]);
      s2 += static_cast<double>(p2[e]);
      s3 += static_cast<double>(p3[e]);
      s4 += static_cast<double>(p4[e]);
      s5 += static_cast<double>(p5[e]);
      s6 += static_cast<double>(p6[e]);
      s7 += static_cast<double>(p7[e]);
    }
    out[i] = s0, out[i + 1] = s1, out[i + 2] = s2, out[i + 3] = s3;
    out[i + 4] = s4, out[i + 5] = s5, out[i + 6] = s6, out[i + 7] = s7;
  }
  for (; i < count; ++i) {
    double s0 = 0.0;
    for (int64_t e = 0; e < e_count; ++e) s0 += static_cast<double>(p[i][e]);
    out[i] = s0;
  }
}

// Passive scores of the chunk's valid rows (rows c0 + k): mean of the first pick minus mean of the
// second, the two means summed in head order like every other mean.
void passive_scores(const float* rewards, int64_t c0, int64_t count, int64_t N, int64_t E,
                    Choice* choices) {
  const float* picked[2 * kChunk];
  double sums[2 * kChunk];
  int64_t m = 0;
  for (int64_t k = 0; k < count; ++k) {
    if (choices[k].first < 0) continue;
    const float* row = rewards + (c0 + k) * N * E;
    picked[m++] = row + choices[k].first * E;
    picked[m++] = row + choices[k].second * E;
  }
  sum_heads(picked, m, E, sums);
  const double denom = static_cast<double>(E);
  m = 0;
  for (int64_t k = 0; k < count; ++k) {
    if (choices[k].first < 0) continue;
    choices[k].score = sums[m] / denom - sums[m + 1] / denom;
    m += 2;
  }
}

// Lowest index n < count holding the largest x[n] (values not NaN): the maximum first, with four
// running maxima so the compares do not wait on each other, then the first index holding it.
// Same answer as a left-to-right "strictly greater" scan, but no chain of count dependent steps.
template <typename T>
int64_t argmax_of(const T* __restrict x, int64_t count) {
  T m0 = x[0], m1 = x[0], m2 = x[0], m3 = x[0];
  int64_t n = 0;
  for (; n + 4 <= count; n += 4) {
    m0 = x[n] > m0 ? x[n] : m0;
    m1 = x[n + 1] > m1 ? x[n + 1] : m1;
    m2 = x[n + 2] > m2 ? x[n + 2] : m2;
    m3 = x[n + 3] > m3 ? x[n + 3] : m3;
  }
  for (; n < count; ++n) m0 = x[n] > m0 ? x[n] : m0;
  m0 = m1 > m0 ? m1 : m0;
  m2 = m3 > m2 ? m3 : m2;
  m0 = m2 > m0 ? m2 : m0;
  n = 0;
  while (!(x[n] == m0)) ++n;
  return n;
}

#if FASTALIGN_AVX2_PATH
// argmax_of for count >= 4 doubles: the maximum four lanes at a time (the last, partial vector
// overlaps the one before: max is idempotent), then the first vector holding it.
__attribute__((target("avx2"))) int64_t argmax_avx2(const double* __restrict x, int64_t count) {
  __m256d m = _mm256_loadu_pd(x);
  for (int64_t n = 4; n + 4 <= count; n += 4) m = _mm256_max_pd(m, _mm256_loadu_pd(x + n));
  m = _mm256_max_pd(m, _mm256_loadu_pd(x + count - 4));
  __m128d h = _mm_max_pd(_mm256_castpd256_pd128(m), _mm256_extractf128_pd(m, 1));
  h = _mm_max_pd(h, _mm_unpackhi_pd(h, h));
  const __m256d best = _mm256_set1_pd(_mm_cvtsd_f64(h));
  int64_t n = 0;
  for (; n + 4 <= count; n += 4) {
    const int hits = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(x + n), best, _CMP_EQ_OQ));
    if (hits) return n + __builtin_ctz(static_cast<unsigned>(hits));
  }
  const double b = _mm_cvtsd_f64(h);
  while (!(x[n] == b)) ++n;
  return n;
}

// masked[n] = -inf where response n is identical to `first`, else x[n] (or -x[n] when negate).
__attribute__((target("avx2"))) void mask_available_avx2(const int64_t* __restrict ids,
                                                         const double* __restrict x, int64_t count,
                                                         int64_t first, bool negate,
                                                         double* __restrict masked) {
  const __m256d unavailable = _mm256_set1_pd(-std::numeric_limits<double>::infinity());
  const __m256d sign = _mm256_set1_pd(negate ? -0.0 : 0.0);  // xor flips the sign bit: exact negation
  const __m256i key = _mm256_set1_epi64x(ids ? ids[first] : first);
  __m256i index = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i step = _mm256_set1_epi64x(4);
  int64_t n = 0;
  for (; n + 4 <= count; n += 4, index = _mm256_add_epi64(index, step)) {
    const __m256i who = ids ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids + n)) : index;
    const __m256d same = _mm256_castsi256_pd(_mm256_cmpeq_epi64(who, key));
    const __m256d v = _mm256_xor_pd(_mm256_loadu_pd(x + n), sign);
    _mm256_storeu_pd(masked + n, _mm256_blendv_pd(v, unavailable, same));
  }
  for (; n < count; ++n) {
    const bool same = ids ? ids[n] == ids[first] : n == first;
    masked[n] = same ? -std::numeric_limits<double>::infinity() : (negate ? -x[n] : x[n]);
  }
}
#endif

// Lowest index of the largest of count doubles (see argmax_of).
int64_t argmax_doubles(const double* x, int64_t count) {
#if FASTALIGN_AVX2_PATH
  if (kHaveAvx2 && count >= 4) return argmax_avx2(x, count);
#endif
  return argmax_of(x, count);
}

// Lowest-index argmax over responses not identical to `first` (the others count as -inf, as in the
// reference) of x, or of -x when `negate` (then it is the lowest-index argmin of x).
int64_t argmax_available(const Row& row, const double* x, int64_t first, bool negate, double* masked) {
#if FASTALIGN_AVX2_PATH
  if (kHaveAvx2) {
    mask_available_avx2(row.ids(), x, row.responses(), first, negate, masked);
    return argmax_doubles(masked, row.responses());
  }
#endif
  const double unavailable = -std::numeric_limits<double>::infinity();
  for (int64_t n = 0; n < row.responses(); ++n)
    masked[n] = row.same(n, first) ? unavailable : (negate ? -x[n] : x[n]);
  return argmax_of(masked, row.responses());
}

Choice select_best_of_n(const Row& row, Scratch& s, RowRng rng) {
  const int64_t first = argmax_doubles(s.mean, row.responses());
  const int64_t second = row.kth_excluding(rng.below(row.count_excluding(first)), first);
  return mean_margin(s, first, second);
}

Choice select_best_worst(const Row& row, Scratch& s) {
  const int64_t first = argmax_doubles(s.mean, row.responses());
  const int64_t second = argmax_available(row, s.mean, first, /*negate=*/true, s.masked.data());
  return mean_margin(s, first, second);
}

Choice select_ee_ts(const Row& row, Scratch& s, RowRng rng) {
  const int64_t e_count = row.heads();
  Choice c;
  c.head1 = rng.below(e_count);
  c.first = row.argmax_head(c.head1);
  // The other heads in ascending order, shuffled lazily by a forward Fisher-Yates: step i fixes
  // position i, so stopping early consumes a prefix of the same draws numpy makes in full.
  int64_t k = 0;
  for (int64_t e = 0; e < e_count; ++e)
    if (e != c.head1) s.order[k++] = e;
  for (int64_t i = 0; i < e_count - 1; ++i) {
    const int64_t j = i + rng.below(e_count - 1 - i);
    std::swap(s.order[i], s.order[j]);
    const int64_t candidate = row.argmax_head(s.order[i]);
    if (!row.same(candidate, c.first)) {
      c.second = candidate;
      c.head2 = s.order[i];
      break;
    }
  }
  if (c.second < 0) c.second = row.argmax_head_excluding(c.head1, c.first);  // second best
  c.score = row.at(c.first, c.head1) - row.at(c.second, c.head1);
  return c;
}

Choice select_bai_ts(const Row& row, Scratch& s, RowRng rng) {
  const int64_t n_count = row.responses();
  Choice c;
  c.head1 = rng.below(row.heads());
  c.first = argmax_of(s.row_t + c.head1 * s.n_padded, n_count);  // the row, head-major
  s.fill_centred();
  variances_against(s.centred.data(), s.acc.data(), s.n_padded, row.heads(), c.first);
  c.second = argmax_available(row, s.acc.data(), c.first, /*negate=*/false, s.masked.data());
  c.score = s.acc[c.second];
  return c;
}

// The pair scan of lane k once group_pair_variances has run.
Choice select_uncertainty(const Row& row, const Scratch& s, int64_t k) {
  const int64_t n_count = row.responses();
  Choice c;
  for (int64_t a = 0; a + 1 < n_count; ++a) {
    for (int64_t b = a + 1; b < n_count; ++b) {
      if (row.same(a, b)) continue;
      const double v = s.group_variance(a, b, k);
      if (c.first < 0 || v > c.score) {
        c.first = a;
        c.second = b;
        c.score = v;
      }
    }
  }
  return c;
}

// Row b's pick; its random stream is seeded only for the rules that draw from it.
Choice select_row(const Row& row, Scratch& s, Strategy strategy, uint64_t seed, int64_t b) {
  const auto stream = [seed, b] { return RowRng(seed, static_cast<uint64_t>(b)); };
  switch (strategy) {
    case Strategy::Passive: return select_passive(row, stream());
    case Strategy::EeTs: return select_ee_ts(row, s, stream());
    case Strategy::BaiTs: return select_bai_ts(row, s, stream());
    case Strategy::Uncertainty: break;  // grouped: see select_group
    case Strategy::BestWorst: return select_best_worst(row, s);
    case Strategy::BestOfN: return select_best_of_n(row, s, stream());
  }
  throw std::logic_error("select_row cannot run the grouped uncertainty rule");
}

}  // namespace

bool avx2_paths() {
#if FASTALIGN_AVX2_PATH
  return kHaveAvx2;
#else
  return false;
#endif
}

const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> names = {"passive",     "ee-ts",      "bai-ts",
                                                  "uncertainty", "best-worst", "best-of-n"};
  return names;
}

Strategy parse_strategy(const std::string& name) {
  const auto& names = strategy_names();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return static_cast<Strategy>(i);
  std::ostringstream msg;
  msg << "unknown selection strategy '" << name << "'; expected one of:";
  for (const auto& n : names) msg << ' ' << n;
  throw std::invalid_argument(msg.str());
}

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

RowRng::RowRng(uint64_t seed, uint64_t row) : state_(mix64(seed ^ mix64(row + kGolden))) {}

uint64_t RowRng::next() {
  state_ += kGolden;
  return mix64(state_);
}

int64_t RowRng::below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }

namespace {

// Branch-free scan: a float is NaN or inf iff its exponent bits are all ones. Four independent
// 8-wide accumulators (GCC/Clang vectors; two SSE2 halves each on baseline x86-64) keep the OR
// chain from limiting the load rate.
FASTALIGN_SIMD_CLONES
bool any_non_finite(const float* __restrict x, int64_t count) {
  typedef uint32_t Words __attribute__((vector_size(32)));
  const Words exponent = Words{} + 0x7F800000u;
  Words bad0{}, bad1{}, bad2{}, bad3{};
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    Words w0, w1, w2, w3;
    std::memcpy(&w0, x + i, sizeof w0);
    std::memcpy(&w1, x + i + 8, sizeof w1);
    std::memcpy(&w2, x + i + 16, sizeof w2);
    std::memcpy(&w3, x + i + 24, sizeof w3);
    bad0 |= (Words)((w0 & exponent) == exponent);
    bad1 |= (Words)((w1 & exponent) == exponent);
    bad2 |= (Words)((w2 & exponent) == exponent);
    bad3 |= (Words)((w3 & exponent) == exponent);
  }
  const Words bad = bad0 | bad1 | bad2 | bad3;
  uint32_t any = 0;
  for (int k = 0; k < 8; ++k) any |= bad[k];
  for (; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    any |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
  }
  return any != 0;
}

// Throws naming the first non-finite value in rows [row_from, row_to) by its [b, n, e] index.
void check_finite_rows(const float* rewards, int64_t row_from, int64_t row_to, int64_t N, int64_t E) {
  const float* begin = rewards + row_from * N * E;
  const int64_t count = (row_to - row_from) * N * E;
  if (!any_non_finite(begin, count)) return;
  for (int64_t i = 0; i < count; ++i) {
    if (std::isfinite(begin[i])) continue;
    std::ostringstream msg;
    msg << "rewards must be finite, found " << begin[i] << " at [b, n, e] = ["
        << row_from + i / (N * E) << ", " << (i / E) % N << ", " << i % E
        << "]; check the reward model's outputs";
    throw std::invalid_argument(msg.str());
  }
}

// Uncertainty for rows [g0, g1) (at most kGroup) of the chunk starting at c0: centre every row
// into its lane, run the grouped kernel, then scan each valid row's pairs. Lanes past g1 keep stale
// finite values whose results are ignored.
void select_uncertainty_group(const float* rewards, const int64_t* ids, int64_t c0, int64_t g0,
                              int64_t g1, int64_t N, int64_t E, Scratch& s, Choice* out) {
  for (int64_t b = g0; b < g1; ++b) {
    s.use_row(b - c0);
    s.fill_grouped(b - g0);
  }
  group_pair_variances(s.grouped.data(), s.group_acc.data(), N, E);
  for (int64_t b = g0; b < g1; ++b) {
    const Row row(rewards + b * N * E, ids ? ids + b * N : nullptr, N, E);
    out[b - g0] = row.has_two_distinct() ? select_uncertainty(row, s, b - g0) : Choice();
  }
}

}  // namespace

void check_finite(const float* rewards, int64_t B, int64_t N, int64_t E) {
  check_finite_rows(rewards, 0, B, N, E);
}

void select_pairs(const float* rewards, const int64_t* ids, int64_t B, int64_t N, int64_t E,
                  Strategy strategy, uint64_t seed, int64_t* pairs, int64_t* heads, double* scores) {
  // Rules that average every response validate each chunk of rows through its means (no second
  // pass over the data); chunks are visited in order, so the first failure is the first bad value.
  const bool by_means = averages_every_response(strategy);
  if (!by_means) check_finite(rewards, B, N, E);
  Scratch scratch(B, N, E, strategy);
  Choice choices[kChunk];
  for (int64_t c0 = 0; c0 < B; c0 += kChunk) {
    const int64_t c1 = std::min(B, c0 + kChunk);
    if (by_means && !scratch.fill_chunk(rewards, c0, c1)) check_finite_rows(rewards, c0, c1, N, E);
    if (strategy == Strategy::Uncertainty) {
      for (int64_t g0 = c0; g0 < c1; g0 += kGroup)
        select_uncertainty_group(rewards, ids, c0, g0, std::min(c1, g0 + kGroup), N, E, scratch,
                                 choices + (g0 - c0));
    } else {
      for (int64_t b = c0; b < c1; ++b) {
        const Row row(rewards + b * N * E, ids ? ids + b * N : nullptr, N, E);
        choices[b - c0] = Choice();
        if (!row.has_two_distinct()) continue;
        if (by_means) scratch.use_row(b - c0);
        choices[b - c0] = select_row(row, scratch, strategy, seed, b);
      }
      if (strategy == Strategy::Passive) passive_scores(rewards, c0, c1 - c0, N, E, choices);
    }
    for (int64_t b = c0; b < c1; ++b) {
      const Choice& c = choices[b - c0];
      pairs[2 * b] = c.first;
      pairs[2 * b + 1] = c.second;
      heads[2 * b] = c.head1;
      heads[2 * b + 1] = c.head2;
      scores[b] = c.score;
    }
  }
}

}  // namespace fastalign
