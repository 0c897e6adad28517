// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief What the decode tests of the CUDA backend (cuda/decode_test.cu, cuda/decode_loop_test.cu)
/// share: values rounded to the storage type, the output tolerance per element type, and the shorter
/// runs of the race run.
#pragma once

#include "support/reference.hpp"

#include <kvcompact/numeric.hpp>

#include <random>
#include <type_traits>
#include <vector>

namespace kvtest {

/// How far an attention output may lie from the reference: the rounding of T (queries and outputs
/// are stored in T; the reference uses the T-rounded queries: 2^-8 relative for bf16, 2^-11 for fp16),
/// fp32 summation error alone for fp32.
template <class T>
double output_tolerance() {
  if constexpr (std::is_same_v<T, kvcompact::bfloat16_t>) return 1.0 / 128.0;
  else if constexpr (std::is_same_v<T, kvcompact::half_t>) return 1.0 / 1024.0;
  else return 1e-5;
}

/// @p full, or @p race_run in the race run (the emulated test under ThreadSanitizer, .ci/test's tsan
/// step, ~10x slower): fewer decode steps and layers there, still with every event of each loop (the
/// sequence that sits out step 2, a lowered budget, a ring that wraps), so every kernel and every
/// inter-thread protocol runs on the same shapes, only fewer times.
constexpr index_t full_or_race_run([[maybe_unused]] index_t full, [[maybe_unused]] index_t race_run) {
#if defined(KVEMU_TSAN)  // set by support/cuda_emulator.hpp under ThreadSanitizer
  return race_run;
#else
  return full;
#endif
}

/// Random values rounded to T, returned both as T (for the device) and as float (for the references).
template <class T>
struct rounded_values {
  std::vector<T> stored;
  std::vector<float> exact;
  rounded_values(index_t count, double scale, std::mt19937& rng) {
    for (float x : random_vector(count, scale, rng)) {
      stored.push_back(kvcompact::from_float<T>(x));
      exact.push_back(kvcompact::to_float(stored.back()));
    }
  }
};

}  // namespace kvtest
