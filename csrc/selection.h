// Pair selection for SEA-style active exploration: pick one response pair per prompt from the
// epistemic reward model's samples R[b, n, e]. The rules, the RNG and the float math are specified
// exactly so that the numpy reference (fastalign/explore/selection.py) reproduces every bit.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastalign {

enum class Strategy { Passive, EeTs, BaiTs, Uncertainty, BestWorst, BestOfN };

// Names in the order of the enum; Python's STRATEGIES must list the same names.
const std::vector<std::string>& strategy_names();

// Throws std::invalid_argument (a Python ValueError) naming the accepted strategies.
Strategy parse_strategy(const std::string& name);

// Whether the hand-written AVX2 paths run (CPU has AVX2 and FASTALIGN_NO_AVX2 is unset or 0).
bool avx2_paths();

// SplitMix64 finaliser: a bijection on 64-bit words with good avalanche.
uint64_t mix64(uint64_t z);

// One independent SplitMix64 stream per (seed, row), so rows can be computed in any order and the
// vectorised numpy reference can advance all rows in lock step.
class RowRng {
 public:
  RowRng(uint64_t seed, uint64_t row);
  uint64_t next();
  // Uniform-ish integer in [0, n) as next() % n (bias <= n / 2^64, negligible and reproducible).
  int64_t below(int64_t n);

 private:
  uint64_t state_;
};

// Throws std::invalid_argument naming the first [b, n, e] whose value is NaN or +-inf.
void check_finite(const float* rewards, int64_t B, int64_t N, int64_t E);

// rewards: [B, N, E] C-contiguous; ids: [B, N] or nullptr (all responses distinct).
// Writes pairs [B, 2], heads [B, 2] and scores [B]; rows with < 2 distinct responses get
// pairs (-1, -1), heads (-1, -1) and a NaN score. Validates like check_finite (same message).
// Never touches Python: safe without the GIL.
void select_pairs(const float* rewards, const int64_t* ids, int64_t B, int64_t N, int64_t E,
                  Strategy strategy, uint64_t seed, int64_t* pairs, int64_t* heads, double* scores);

}  // namespace fastalign
