// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Tensor-parallel shards of a test cache: one rank's KV heads as a cache of their own, and the
/// comparison of a shard's head with the unsharded cache's.
#pragma once

#include "support/reference.hpp"

namespace kvtest {

/// @brief KV heads [first, first + count) of @p full (lengths, positions, K/V of every slot) as a cache of their own.
template <class T>
random_cache<T> shard_heads(const random_cache<T>& full, index_t first, index_t count) {
  cache_shape shape = full.shape;
  shape.kv_heads = count;
  random_cache<T> out(shape);
  for (index_t s = 0; s < shape.sequences; ++s)
    for (index_t l = 0; l < shape.layers; ++l)
      for (index_t h = 0; h < count; ++h) {
        out.lengths[static_cast<std::size_t>(out.head_index(s, l, h))] = full.lengths[static_cast<std::size_t>(full.head_index(s, l, first + h))];
        for (index_t j = 0; j < shape.capacity; ++j) {
          out.positions[static_cast<std::size_t>(out.slot_index(s, l, h, j))] = full.positions[static_cast<std::size_t>(full.slot_index(s, l, first + h, j))];
          for (index_t d = 0; d < shape.head_dim; ++d) {
            out.keys[static_cast<std::size_t>(out.element(s, l, h, j, d))] = full.keys[static_cast<std::size_t>(full.element(s, l, first + h, j, d))];
            out.values[static_cast<std::size_t>(out.element(s, l, h, j, d))] = full.values[static_cast<std::size_t>(full.element(s, l, first + h, j, d))];
          }
        }
      }
  return out;
}

/// @brief True when head @p h of @p shard holds what head @p full_head of @p full holds in sequence @p s,
/// layer @p l (length, and per valid slot position and K/V bits).
template <class T>
bool same_head(const random_cache<T>& shard, index_t h, const random_cache<T>& full, index_t full_head, index_t s, index_t l) {
  if (shard.length(s, l, h) != full.length(s, l, full_head)) return false;
  for (index_t j = 0; j < shard.length(s, l, h); ++j) {
    if (shard.position(s, l, h, j) != full.position(s, l, full_head, j)) return false;
    for (index_t d = 0; d < shard.shape.head_dim; ++d)
      if (shard.key(s, l, h, j, d) != full.key(s, l, full_head, j, d) || shard.value(s, l, h, j, d) != full.value(s, l, full_head, j, d)) return false;
  }
  return true;
}

}  // namespace kvtest
