// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief kvcompact::kv_cache: the engine's K/V memory seen through a layout, with per-head lengths
/// and per-slot logical positions.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/layouts/concepts.hpp>
#include <kvcompact/numeric.hpp>

#include <cstdint>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief A non-owning view of an engine's KV cache.
///
/// `keys` and `values` share one layout. `lengths[(sequence * layers + layer) * kv_heads + head]`
/// counts the valid slots `[0, length)` of each head, and `positions[that index * capacity + slot]`
/// holds the logical (original token) position of each valid slot. Slots need not be in position
/// order: decode-time eviction reuses the victim's slot for the new token.
/// @tparam T storage element (float, kvcompact::half_t, kvcompact::bfloat16_t)
/// @tparam Layout a kvcompact::kv_layout
template <class T, class Layout>
struct kv_cache {
  static_assert(storage_element<T>, "kvcompact: kv_cache<T, Layout>: T must be float, kvcompact::half_t or kvcompact::bfloat16_t");
  static_assert(detail::check_layout<Layout>(), "kvcompact: kv_cache<T, Layout>: Layout is not a kvcompact::kv_layout");

  Layout layout;            ///< maps (sequence, layer, head, slot) to element offsets
  T* keys;                  ///< key storage (post-RoPE keys)
  T* values;                ///< value storage
  std::int32_t* lengths;    ///< [sequences][layers][kv_heads] valid slots per head
  std::int32_t* positions;  ///< [sequences][layers][kv_heads][capacity] logical positions per slot

  /// @brief Index of one head's entry in @ref lengths.
  /// @param sequence sequence @param layer storage layer @param head KV head
  /// @return the flat index
  KVCOMPACT_HOST_DEVICE index_t head_index(index_t sequence, index_t layer, index_t head) const {
    return (sequence * layout.num_layers() + layer) * layout.num_kv_heads() + head;
  }
  /// @brief Index of one slot's entry in @ref positions (and in per-slot state arrays).
  /// @param sequence sequence @param layer storage layer @param head KV head @param slot slot
  /// @return the flat index
  KVCOMPACT_HOST_DEVICE index_t slot_index(index_t sequence, index_t layer, index_t head, index_t slot) const {
    return head_index(sequence, layer, head) * layout.capacity() + slot;
  }
  /// @brief Number of entries of @ref lengths. @return sequences * layers * kv_heads
  KVCOMPACT_HOST_DEVICE index_t head_count() const {
    return layout.num_sequences() * layout.num_layers() * layout.num_kv_heads();
  }

  /// @brief Checks the layout (kvcompact::detail::validate_layout), pointers, alignment, that keys
  /// and values are not the same memory, and every length.
  /// @param where name of the calling entry point, used in error messages
  /// @throws kvcompact::error naming the first bad argument
  void validate(const char* where) const {
    detail::validate_layout(layout, where);
    detail::require(keys != nullptr, where, "cache.keys", "null pointer");
    detail::require(values != nullptr, where, "cache.values", "null pointer");
    detail::require(lengths != nullptr, where, "cache.lengths", "null pointer");
    detail::require(positions != nullptr, where, "cache.positions", "null pointer");
    detail::require(static_cast<const void*>(keys) != static_cast<const void*>(values), where, "cache.values", "is the same memory as cache.keys");
    detail::require(reinterpret_cast<std::uintptr_t>(keys) % alignof(T) == 0, where, "cache.keys", "misaligned for the element type");
    detail::require(reinterpret_cast<std::uintptr_t>(values) % alignof(T) == 0, where, "cache.values", "misaligned for the element type");
    detail::require(reinterpret_cast<std::uintptr_t>(lengths) % alignof(std::int32_t) == 0, where, "cache.lengths", "misaligned");
    detail::require(reinterpret_cast<std::uintptr_t>(positions) % alignof(std::int32_t) == 0, where, "cache.positions", "misaligned");
    for (index_t i = 0; i < head_count(); ++i) {
      const index_t capacity = detail::layer_capacity(layout, (i / layout.num_kv_heads()) % layout.num_layers());
      if (lengths[i] < 0 || lengths[i] > capacity) {
        throw error(where, "cache.lengths",
                    "entry " + std::to_string(i) + " is " + std::to_string(lengths[i]) + ", outside [0, capacity " + std::to_string(capacity) +
                        " of its layer]");
      }
    }
    for (index_t i = 0; i < head_count(); ++i) {  // a paged layout maps only the pages a sequence owns
      const index_t sequence = i / (layout.num_layers() * layout.num_kv_heads());
      if (lengths[i] > 0 && !detail::slot_in_range(layout, sequence, lengths[i] - 1))
        throw error(where, "cache.lengths",
                    "entry " + std::to_string(i) + " is " + std::to_string(lengths[i]) + ", but slot " + std::to_string(lengths[i] - 1) +
                        " of sequence " + std::to_string(sequence) + " is not in a page the layout gives it");
    }
  }
};

KVCOMPACT_NAMESPACE_END
