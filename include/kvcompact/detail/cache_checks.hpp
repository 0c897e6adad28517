// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Checks of what an engine hands the host backend as data: finite keys, values and queries,
/// and slot positions that are set (not negative) and distinct within a head. None allocates.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/numeric.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Throws kvcompact::error about @p argument when one of the @p count elements at @p data is NaN or
/// infinite, naming its index.
template <class T>
void require_finite(const T* data, index_t count, const char* where, std::string_view argument) {
  for (index_t i = 0; i < count; ++i)
    if (!std::isfinite(to_float(data[i])))
      throw error(where, argument, "element " + std::to_string(i) + " is " + std::to_string(to_float(data[i])) + " (NaN and Inf are not accepted)");
}

/// Throws kvcompact::error about "cache.keys" or "cache.values" when an element of a valid slot is
/// NaN or infinite (reads every valid slot once).
template <class T, class Layout>
void require_finite_slots(const kv_cache<T, Layout>& cache, const char* where) {
  const index_t stride = cache.layout.dim_stride();
  for (index_t s = 0; s < cache.layout.num_sequences(); ++s)
    for (index_t l = 0; l < cache.layout.num_layers(); ++l)
      for (index_t h = 0; h < cache.layout.num_kv_heads(); ++h) {
        const index_t length = cache.lengths[cache.head_index(s, l, h)];
        for (index_t j = 0; j < length; ++j) {
          const index_t base = cache.layout.offset(s, l, h, j);
          for (index_t d = 0; d < cache.layout.head_dim(); ++d) {
            const bool key_ok = std::isfinite(to_float(cache.keys[base + d * stride]));
            if (key_ok && std::isfinite(to_float(cache.values[base + d * stride]))) continue;
            throw error(where, key_ok ? "cache.values" : "cache.keys",
                        "NaN or Inf at sequence " + std::to_string(s) + " layer " + std::to_string(l) + " head " + std::to_string(h) +
                            " slot " + std::to_string(j) + " dim " + std::to_string(d));
          }
        }
      }
}

/// Throws kvcompact::error about "cache.positions" when a valid slot's position is negative (unset)
/// or two valid slots of a head share a position. @p scratch holds capacity() entries.
template <class T, class Layout>
void require_valid_positions(const kv_cache<T, Layout>& cache, std::int32_t* scratch, const char* where) {
  for (index_t s = 0; s < cache.layout.num_sequences(); ++s)
    for (index_t l = 0; l < cache.layout.num_layers(); ++l)
      for (index_t h = 0; h < cache.layout.num_kv_heads(); ++h) {
        const index_t length = cache.lengths[cache.head_index(s, l, h)];
        const std::int32_t* positions = cache.positions + cache.slot_index(s, l, h, 0);
        auto place = [&] { return " in sequence " + std::to_string(s) + " layer " + std::to_string(l) + " head " + std::to_string(h); };
        for (index_t j = 0; j < length; ++j) {
          if (positions[j] < 0)
            throw error(where, "cache.positions", "slot " + std::to_string(j) + place() + " has position " + std::to_string(positions[j]) +
                                                      " (unset?): positions must not be negative");
          scratch[j] = positions[j];
        }
        std::sort(scratch, scratch + length);
        const std::int32_t* twice = std::adjacent_find(scratch, scratch + length);
        if (twice != scratch + length)
          throw error(where, "cache.positions", "position " + std::to_string(*twice) + " is held by two slots" + place());
      }
}

/// The largest position held by a head, -1 when it is empty.
template <class T, class Layout>
index_t newest_position(const kv_cache<T, Layout>& cache, index_t sequence, index_t layer, index_t head) {
  const std::int32_t* positions = cache.positions + cache.slot_index(sequence, layer, head, 0);
  const index_t length = cache.lengths[cache.head_index(sequence, layer, head)];
  return length > 0 ? *std::max_element(positions, positions + length) : -1;
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
