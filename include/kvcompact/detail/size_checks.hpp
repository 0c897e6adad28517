// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Guard of the sessions' size queries (state_bytes, workspace_bytes): the extents a size is
/// built from must not overflow it.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/types.hpp>

#include <initializer_list>
#include <string_view>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Largest product of extents a size query accepts: 2^56, so that a sum of a few dozen such terms,
/// each times a few bytes, still fits a 64-bit size_t.
inline constexpr index_t size_product_limit = index_t{1} << 56;

/// Throws kvcompact::error about @p argument unless every factor is positive and their product is at
/// most size_product_limit (checked without overflowing).
inline void require_size_fits(std::initializer_list<index_t> factors, const char* where, std::string_view argument) {
  index_t product = 1;
  for (const index_t f : factors) {
    require(f > 0, where, argument, "every extent a size is built from must be positive");
    require(product <= size_product_limit / f, where, argument, "the sizes it implies overflow a 64-bit size_t");
    product *= f;
  }
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
