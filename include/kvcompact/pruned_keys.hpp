// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief kvcompact::pruned_keys: key storage with fewer channels per head (ThinK), next to a cache
/// whose values stay full width.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/numeric.hpp>
#include <kvcompact/types.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief A non-owning view of pruned keys: per (sequence, storage layer, KV head) the ascending list
/// of its `kept` channels, `thin_lengths[head]` thin slots holding only those channels, and full-width
/// tail slots after them.
///
/// It replaces the key storage of a kvcompact::kv_cache whose values, positions and lengths stay in
/// use: slot `j` of a head is thin for `j < thin_lengths[head]` and the tail row
/// `j - thin_lengths[head]` otherwise. Memory order of every array is [sequence][layer][kv_head][...]:
/// `thin` is [thin_capacity][kept], `tail` is [tail_capacity][head_dim], `channels` is [kept], so the
/// key bytes per head are `(thin_capacity * kept + tail_capacity * head_dim) * sizeof(T)` instead of
/// `capacity * head_dim * sizeof(T)`. Written by `prune_key_channels` of either backend, extended by
/// `append_pruned`, read by `attend_pruned`.
/// @tparam T storage element (float, kvcompact::half_t, kvcompact::bfloat16_t)
template <class T>
struct pruned_keys {
  static_assert(storage_element<T>, "kvcompact: pruned_keys<T>: T must be float, kvcompact::half_t or kvcompact::bfloat16_t");

  index_t sequences;             ///< sequences (as the cache)
  index_t layers;                ///< storage layers (as the cache)
  index_t kv_heads;              ///< KV heads (as the cache)
  index_t head_dim;              ///< full head dimension (as the cache)
  index_t kept;                  ///< channels kept per head (the selector's kept_channels(head_dim))
  index_t thin_capacity;         ///< thin slots per head
  index_t tail_capacity;         ///< full-width slots per head (unpruned newest prompt slots and decode tokens)
  T* thin;                       ///< [S][L][H][thin_capacity][kept] kept channels of the thin slots
  T* tail;                       ///< [S][L][H][tail_capacity][head_dim] full-width slots
  std::uint16_t* channels;       ///< [S][L][H][kept] kept channel indices, ascending
  std::int32_t* thin_lengths;    ///< [S][L][H] thin slots per head

  /// @brief Flat index of a head. @param sequence sequence @param layer storage layer @param head KV head @return the index
  KVCOMPACT_HOST_DEVICE index_t head_index(index_t sequence, index_t layer, index_t head) const {
    return (sequence * layers + layer) * kv_heads + head;
  }
  /// @brief Heads in the store. @return sequences * layers * kv_heads
  KVCOMPACT_HOST_DEVICE index_t head_count() const { return sequences * layers * kv_heads; }
  /// @brief Kept channel list of a head. @param head flat head index @return pointer to its @ref kept indices
  KVCOMPACT_HOST_DEVICE std::uint16_t* channel_list(index_t head) const { return channels + head * kept; }
  /// @brief Thin row of a slot. @param head flat head index @param slot thin slot @return pointer to its @ref kept elements
  KVCOMPACT_HOST_DEVICE T* thin_row(index_t head, index_t slot) const { return thin + (head * thin_capacity + slot) * kept; }
  /// @brief Full-width row of a tail slot. @param head flat head index @param row tail row @return pointer to its @ref head_dim elements
  KVCOMPACT_HOST_DEVICE T* tail_row(index_t head, index_t row) const { return tail + (head * tail_capacity + row) * head_dim; }

  /// @brief Elements of @ref thin. @return head_count() * thin_capacity * kept
  index_t thin_elements() const { return head_count() * thin_capacity * kept; }
  /// @brief Elements of @ref tail. @return head_count() * tail_capacity * head_dim
  index_t tail_elements() const { return head_count() * tail_capacity * head_dim; }
  /// @brief Bytes of key storage (thin and tail rows plus channel lists). @return the byte count
  std::size_t key_bytes() const {
    return static_cast<std::size_t>(thin_elements() + tail_elements()) * sizeof(T) + static_cast<std::size_t>(head_count() * kept) * sizeof(std::uint16_t);
  }

  /// @brief Checks extents and pointers, and that the store matches a cache's shape.
  /// @param cache_sequences the cache's sequences @param cache_layers the cache's storage layers
  /// @param cache_kv_heads the cache's KV heads @param cache_head_dim the cache's head dimension
  /// @param where name of the calling entry point, used in error messages
  /// @throws kvcompact::error naming the first bad member ("pruned.head_dim", "pruned.kept", ...)
  void validate(index_t cache_sequences, index_t cache_layers, index_t cache_kv_heads, index_t cache_head_dim, const char* where) const {
    auto same = [&](index_t mine, index_t cache, const char* name) {
      detail::require(mine == cache, where, name, [&] { return "is " + std::to_string(mine) + " but the cache has " + std::to_string(cache); });
    };
    same(sequences, cache_sequences, "pruned.sequences");
    same(layers, cache_layers, "pruned.layers");
    same(kv_heads, cache_kv_heads, "pruned.kv_heads");
    same(head_dim, cache_head_dim, "pruned.head_dim");
    detail::require(head_dim <= 65536, where, "pruned.head_dim", "channel indices are 16-bit: at most 65536");
    detail::require(kept >= 1 && kept <= head_dim, where, "pruned.kept", [&] { return "is " + std::to_string(kept) + ", outside [1, head_dim]"; });
    detail::require(thin_capacity >= 0, where, "pruned.thin_capacity", "is negative");
    detail::require(tail_capacity >= 0, where, "pruned.tail_capacity", "is negative");
    detail::require(thin != nullptr || thin_capacity == 0, where, "pruned.thin", "null pointer");
    detail::require(tail != nullptr || tail_capacity == 0, where, "pruned.tail", "null pointer");
    detail::require(channels != nullptr, where, "pruned.channels", "null pointer");
    detail::require(thin_lengths != nullptr, where, "pruned.thin_lengths", "null pointer");
  }
};

KVCOMPACT_NAMESPACE_END
