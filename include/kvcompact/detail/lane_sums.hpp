// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Lane-parallel float sums with one fixed association, shared by both backends: a reduction
/// keeps simd_lanes strided partial sums (element i goes to lane i % simd_lanes, each lane summed in
/// order) and sum_lanes() combines them pairwise. The CPU backend's lane loops vectorise that shape
/// (one vector register of partial sums); a CUDA thread runs the same arithmetic in registers, so
/// both backends get the same bits from the same definition.
#pragma once

#include <kvcompact/types.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {

/// Independent partial sums per reduction: one 512-bit vector of floats, two 256-bit ones.
inline constexpr int simd_lanes = 16;

/// Sum of the simd_lanes of an accumulator array, in one fixed (pairwise) order.
KVCOMPACT_HOST_DEVICE inline float sum_lanes(const float (&acc)[simd_lanes]) {
  float half[simd_lanes / 2];
  for (int l = 0; l < simd_lanes / 2; ++l) half[l] = acc[l] + acc[l + simd_lanes / 2];
  float quarter[simd_lanes / 4];
  for (int l = 0; l < simd_lanes / 4; ++l) quarter[l] = half[l] + half[l + simd_lanes / 4];
  return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

}  // namespace detail

KVCOMPACT_NAMESPACE_END
