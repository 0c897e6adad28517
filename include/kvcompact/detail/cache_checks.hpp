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
#include <functional>
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

/// The storage layers a check reads: [first, first + count), count -1 meaning every layer from first.
struct layer_range {
  index_t first = 0;   ///< first layer
  index_t count = -1;  ///< layers, -1: to the last one
  /// One past the last layer of a cache with @p layers layers. @param layers the cache's layers @return the end
  index_t end(index_t layers) const { return count < 0 ? layers : first + count; }
};

/// Throws kvcompact::error about "cache.keys" or "cache.values" when an element of a valid slot is
/// NaN or infinite (reads every valid slot of @p layers once).
template <class T, class Layout>
void require_finite_slots(const kv_cache<T, Layout>& cache, const char* where, layer_range layers = {}) {
  const index_t stride = cache.layout.dim_stride();
  for (index_t s = 0; s < cache.layout.num_sequences(); ++s)
    for (index_t l = layers.first; l < layers.end(cache.layout.num_layers()); ++l)
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
/// or two valid slots of a head share a position (in @p layers); positions already strictly ascending
/// (what a prefill holds) are checked in one pass, others by sorting a copy. @p scratch holds capacity() entries.
template <class T, class Layout>
void require_valid_positions(const kv_cache<T, Layout>& cache, std::int32_t* scratch, const char* where, layer_range layers = {}) {
  for (index_t s = 0; s < cache.layout.num_sequences(); ++s)
    for (index_t l = layers.first; l < layers.end(cache.layout.num_layers()); ++l)
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
        if (std::adjacent_find(scratch, scratch + length, std::greater_equal<>{}) == scratch + length) continue;  // strictly ascending: distinct
        std::sort(scratch, scratch + length);
        const std::int32_t* twice = std::adjacent_find(scratch, scratch + length);
        if (twice != scratch + length)
          throw error(where, "cache.positions", "position " + std::to_string(*twice) + " is held by two slots" + place());
      }
}

/// Throws kvcompact::error about "cache.positions" unless every KV head of each (sequence, layer)
/// holds the same positions in the same slots as head 0 (what scores shared across KV heads need:
/// they sum the query heads of all KV heads slot by slot), in @p layers.
template <class T, class Layout>
void require_slot_aligned_heads(const kv_cache<T, Layout>& cache, const char* where, layer_range layers = {}) {
  for (index_t s = 0; s < cache.layout.num_sequences(); ++s)
    for (index_t l = layers.first; l < layers.end(cache.layout.num_layers()); ++l) {
      const index_t length = cache.lengths[cache.head_index(s, l, 0)];
      const std::int32_t* first = cache.positions + cache.slot_index(s, l, 0, 0);
      for (index_t h = 1; h < cache.layout.num_kv_heads(); ++h) {
        const std::int32_t* other = cache.positions + cache.slot_index(s, l, h, 0);
        if (cache.lengths[cache.head_index(s, l, h)] != length || !std::equal(first, first + length, other))
          throw error(where, "cache.positions",
                      "head " + std::to_string(h) + " of sequence " + std::to_string(s) + " layer " + std::to_string(l) +
                          " does not hold head 0's positions in the same slots, which a policy whose scores are shared across KV heads needs");
      }
    }
}

/// Throws kvcompact::error about "cache.positions" unless, in every sequence, every head of every
/// layer holds the same set of positions as head 0 of its group's first layer (layers l with the same
/// l / @p group; what a selector that decides per group of layers, WindowKV's, needs). @p scratch
/// holds 2 x capacity() entries.
template <class T, class Layout>
void require_equal_layer_groups(const kv_cache<T, Layout>& cache, index_t group, std::int32_t* scratch, const char* where) {
  const index_t capacity = cache.layout.capacity();
  auto sorted = [&](index_t s, index_t l, index_t h, std::int32_t* out) {
    const index_t length = cache.lengths[cache.head_index(s, l, h)];
    const std::int32_t* positions = cache.positions + cache.slot_index(s, l, h, 0);
    std::copy(positions, positions + length, out);
    std::sort(out, out + length);
    return length;
  };
  for (index_t s = 0; s < cache.layout.num_sequences(); ++s)
    for (index_t l = 0; l < cache.layout.num_layers(); ++l) {
      const index_t leader = l - l % group;
      const index_t length = sorted(s, leader, 0, scratch);
      for (index_t h = 0; h < cache.layout.num_kv_heads(); ++h) {
        if (l == leader && h == 0) continue;
        if (sorted(s, l, h, scratch + capacity) != length || !std::equal(scratch, scratch + length, scratch + capacity))
          throw error(where, "cache.positions",
                      "head " + std::to_string(h) + " of sequence " + std::to_string(s) + " layer " + std::to_string(l) + " does not hold the positions of layer " +
                          std::to_string(leader) + " head 0, whose window decision the layers of its group share");
      }
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
