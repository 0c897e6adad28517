// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Index type and small shared enumerations.
#pragma once

#include <kvcompact/config.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Signed index type for element offsets and counts.
using index_t = std::int64_t;

/// @brief How values are combined by a reduction (over window rows, over a GQA group, or pooling).
enum class reduction : std::uint8_t {
  sum,   ///< plain sum
  mean,  ///< sum divided by the number of terms
  max,   ///< maximum
};

namespace detail {
/// Identity element of a reduction.
KVCOMPACT_HOST_DEVICE inline float reduction_identity(reduction r) { return r == reduction::max ? -3.402823466e38f : 0.0f; }
/// Folds one term into an accumulator.
KVCOMPACT_HOST_DEVICE inline float reduction_combine(reduction r, float accumulator, float term) {
  if (r == reduction::max) return term > accumulator ? term : accumulator;
  return accumulator + term;
}
/// Turns an accumulator over @p count terms into the reduced value.
KVCOMPACT_HOST_DEVICE inline float reduction_finish(reduction r, float accumulator, int count) {
  return r == reduction::mean && count > 0 ? accumulator / static_cast<float>(count) : accumulator;
}
}  // namespace detail

KVCOMPACT_NAMESPACE_END
