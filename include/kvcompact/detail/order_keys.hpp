// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief 64-bit keys whose unsigned order is kvcompact's ranking, for partial selection on both
/// backends (kvcompact::execution_group::kth_largest): a larger key ranks first, 0 is "not an item".
#pragma once

#include <kvcompact/types.hpp>

#include <cstdint>
#include <cstring>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Bits of a (non-NaN) float whose unsigned order is the float order; -0 and +0 give the same bits,
/// as they compare equal. Never 0 or 0xffffffff for a non-NaN value.
KVCOMPACT_HOST_DEVICE inline std::uint32_t orderable_bits(float value) {
  const float x = value == 0.0f ? 0.0f : value;
  std::uint32_t bits = 0;
  memcpy(&bits, &x, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

/// Key ranking a higher @p score first and, among equal scores, a lower @p tie first.
KVCOMPACT_HOST_DEVICE inline std::uint64_t order_key(float score, std::uint32_t tie) {
  return (static_cast<std::uint64_t>(orderable_bits(score)) << 32) | (0xffffffffu - tie);
}

/// kvcompact's ranking of candidates (kvcompact::detail::ranks_before): higher score, then lower
/// position. @param score the candidate's key @param position its logical position (>= 0)
KVCOMPACT_HOST_DEVICE inline std::uint64_t rank_key(float score, index_t position) {
  return order_key(score, static_cast<std::uint32_t>(position));
}

/// The reverse ranking, for eviction: the lowest score first and, among equal scores, the higher
/// position first. @param score the candidate's key @param position its logical position (>= 0)
KVCOMPACT_HOST_DEVICE inline std::uint64_t eviction_key(float score, index_t position) { return ~rank_key(score, position); }

}  // namespace detail
KVCOMPACT_NAMESPACE_END
