// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Key-channel pruning on the CPU (ThinK): select each head's key channels after token
/// selection, store the kept slots' keys thin, append decode tokens, attend over the kept channels.
#pragma once

#include <kvcompact/channels/concepts.hpp>
#include <kvcompact/detail/channel_ranking.hpp>
#include <kvcompact/error.hpp>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/pruned_keys.hpp>
#include <kvcompact/query_window.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {
/// Checks what the pruned-key entry points share: the value side of the cache and the pruned store.
template <class T, class Layout>
void check_pruned_cache(const kv_cache<T, Layout>& cache, const pruned_keys<T>& pruned, const char* where) {
  validate_layout(cache.layout, where);
  require(cache.values != nullptr, where, "cache.values", "null pointer");
  require(cache.lengths != nullptr, where, "cache.lengths", "null pointer");
  require(cache.positions != nullptr, where, "cache.positions", "null pointer");
  pruned.validate(cache.layout.num_sequences(), cache.layout.num_layers(), cache.layout.num_kv_heads(), cache.layout.head_dim(), where);
}

/// Logit scale of a shape: its own or 1 / sqrt(head_dim).
inline float logit_scale(const attention_shape& shape, index_t head_dim) {
  return shape.scale > 0.0f ? shape.scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}
}  // namespace detail

namespace cpu {

/// @brief Selects the key channels of every head of a token-compressed cache and writes its keys into
/// a pruned store: all but the selector's unpruned_tail() newest slots keep only the selected channels,
/// the tail keeps every channel. Values stay in @p cache; its keys are no longer read afterwards, so the
/// engine may release them.
///
/// Runs after any token policy's `compress_prefill` (ThinK + SnapKV in the paper), with the same
/// observation window. A channel's energies are averaged over the window rows of the head's GQA group
/// and over the head's slots; the selector scores them and the best kept_channels(head_dim) survive
/// (kvcompact::detail::channel_is_kept).
/// @param selector a kvcompact::channel_selector
/// @param cache the compressed cache (keys read, slots in position order as prefill compression leaves them)
/// @param shape query heads of the model (head_dim 0 or the cache's)
/// @param window the observation window of the prefill (queries per storage layer, post-RoPE)
/// @param pruned the store, shaped like @p cache, with kept == selector.kept_channels(head_dim)
/// @throws kvcompact::error naming the bad argument (a selector parameter, "pruned.kept",
/// "pruned.head_dim", "window.head_dim", "pruned.thin_capacity", "cache.positions", ...)
template <class Selector, class T, class Layout>
void prune_key_channels(const Selector& selector, const kv_cache<T, Layout>& cache, const attention_shape& shape, const query_window& window,
                        const pruned_keys<T>& pruned) {
  static_assert(detail::check_channel_selector<Selector>(), "kvcompact: cpu::prune_key_channels: Selector is not a kvcompact::channel_selector");
  constexpr const char* where = "cpu::prune_key_channels";
  selector.validate(where);
  cache.validate(where);
  const auto& layout = cache.layout;
  const index_t dims = layout.head_dim(), layers = layout.num_layers(), kv_heads = layout.num_kv_heads();
  shape.validate(kv_heads, dims, where);
  pruned.validate(layout.num_sequences(), layers, kv_heads, dims, where);
  detail::require(pruned.kept == selector.kept_channels(dims), where, "pruned.kept",
                  [&] { return "is " + std::to_string(pruned.kept) + " but the selector keeps " + std::to_string(selector.kept_channels(dims)) + " channels"; });
  detail::require(window.queries != nullptr, where, "window.queries", "null pointer");
  detail::require(window.rows > 0, where, "window.rows", "must be positive");
  detail::require(window.head_dim == 0 || window.head_dim == dims, where, "window.head_dim",
                  [&] { return "is " + std::to_string(window.head_dim) + " but the cache's head_dim is " + std::to_string(dims); });
  const index_t group = shape.query_heads / kv_heads;
  std::vector<float> scores(static_cast<std::size_t>(dims));
  for (index_t s = 0; s < layout.num_sequences(); ++s)
    for (index_t l = 0; l < layers; ++l)
      for (index_t h = 0; h < kv_heads; ++h) {
        const index_t head = cache.head_index(s, l, h), length = cache.lengths[head];
        const index_t tail = std::min<index_t>(length, selector.unpruned_tail()), thin = length - tail;
        const std::int32_t* positions = cache.positions + cache.slot_index(s, l, h, 0);
        for (index_t j = 1; j < length; ++j)
          detail::require(positions[j - 1] < positions[j], where, "cache.positions",
                          [&] { return "slots of head " + std::to_string(head) + " are not in position order (prefill compression keeps them in order)"; });
        detail::require(thin <= pruned.thin_capacity, where, "pruned.thin_capacity",
                        [&] { return "is " + std::to_string(pruned.thin_capacity) + " but head " + std::to_string(head) + " has " + std::to_string(thin) + " thin slots"; });
        detail::require(tail <= pruned.tail_capacity, where, "pruned.tail_capacity",
                        [&] { return "is " + std::to_string(pruned.tail_capacity) + " but head " + std::to_string(head) + " has " + std::to_string(tail) + " tail slots"; });
        for (index_t c = 0; c < dims; ++c)
          scores[c] = selector.channel_score(detail::query_energy(window, s, l, h * group, group, layers, shape.query_heads, dims, c),
                                             detail::key_energy(cache, s, l, h, length, c));
        std::uint16_t* channels = pruned.channel_list(head);
        index_t count = 0;
        for (index_t c = 0; c < dims; ++c)
          if (detail::channel_is_kept(scores.data(), dims, c, pruned.kept)) channels[count++] = static_cast<std::uint16_t>(c);
        for (index_t j = 0; j < length; ++j) {
          const T* key = cache.keys + layout.offset(s, l, h, j);
          if (j < thin) {
            T* row = pruned.thin_row(head, j);
            for (index_t i = 0; i < pruned.kept; ++i) row[i] = key[channels[i] * layout.dim_stride()];
          } else {
            T* row = pruned.tail_row(head, j - thin);
            for (index_t c = 0; c < dims; ++c) row[c] = key[c * layout.dim_stride()];
          }
        }
        pruned.thin_lengths[head] = static_cast<std::int32_t>(thin);
      }
}

/// @brief Appends one decode token to every KV head of a storage layer: its key as a full-width tail
/// row of @p pruned, its value and position into @p cache (no eviction, as in ThinK).
/// @param cache the cache (values, lengths, positions; its keys are not touched)
/// @param pruned the pruned store written by prune_key_channels
/// @param sequence sequence @param layer storage layer
/// @param keys [kv_heads][head_dim] new keys @param values [kv_heads][head_dim] new values
/// @param position the token's logical position
/// @throws kvcompact::error naming the bad argument ("cache.lengths" for a full head, "pruned.tail_capacity", ...)
template <class T, class Layout>
void append_pruned(const kv_cache<T, Layout>& cache, const pruned_keys<T>& pruned, index_t sequence, index_t layer, const T* keys, const T* values,
                   index_t position) {
  constexpr const char* where = "cpu::append_pruned";
  detail::check_pruned_cache(cache, pruned, where);
  const auto& layout = cache.layout;
  detail::require(sequence >= 0 && sequence < layout.num_sequences(), where, "sequence", "out of range");
  detail::require(layer >= 0 && layer < layout.num_layers(), where, "layer", "out of range");
  detail::require(keys != nullptr, where, "keys", "null pointer");
  detail::require(values != nullptr, where, "values", "null pointer");
  detail::require(position >= 0 && position <= std::numeric_limits<std::int32_t>::max(), where, "position", "outside [0, INT32_MAX]");
  const index_t dims = layout.head_dim();
  for (index_t h = 0; h < layout.num_kv_heads(); ++h) {
    const index_t head = cache.head_index(sequence, layer, h), length = cache.lengths[head], row = length - pruned.thin_lengths[head];
    detail::require(length < detail::layer_capacity(layout, layer), where, "cache.lengths", [&] { return "head " + std::to_string(head) + " is full"; });
    detail::require(row >= 0 && row < pruned.tail_capacity, where, "pruned.tail_capacity",
                    [&] { return "is " + std::to_string(pruned.tail_capacity) + ": no tail row left for head " + std::to_string(head); });
    T* key = pruned.tail_row(head, row);
    T* value = cache.values + layout.offset(sequence, layer, h, length);
    for (index_t c = 0; c < dims; ++c) {
      key[c] = keys[h * dims + c];
      value[c * layout.dim_stride()] = values[h * dims + c];
    }
    cache.positions[cache.slot_index(sequence, layer, h, length)] = static_cast<std::int32_t>(position);
    cache.lengths[head] = static_cast<std::int32_t>(length + 1);
  }
}

/// @brief Decode attention of one token's queries over a cache with pruned keys: each query head's
/// query is gathered to its KV head's kept channels once, thin slots cost a kept-long dot product,
/// tail slots a full one; softmax over the slots whose position is not after @p position.
/// @param cache the cache (values, lengths, positions) @param pruned its pruned keys
/// @param shape query heads and scale (0: 1 / sqrt(head_dim))
/// @param sequence sequence @param layer storage layer
/// @param queries [query_heads][head_dim] post-RoPE queries
/// @param position the query's logical position
/// @param output [query_heads][head_dim] attention outputs (zero for a head that sees no slot)
/// @throws kvcompact::error naming the bad argument
template <class T, class Layout>
void attend_pruned(const kv_cache<T, Layout>& cache, const pruned_keys<T>& pruned, const attention_shape& shape, index_t sequence, index_t layer,
                   const float* queries, index_t position, float* output) {
  constexpr const char* where = "cpu::attend_pruned";
  detail::check_pruned_cache(cache, pruned, where);
  const auto& layout = cache.layout;
  const index_t dims = layout.head_dim(), group = shape.query_heads / layout.num_kv_heads();
  shape.validate(layout.num_kv_heads(), dims, where);
  detail::require(sequence >= 0 && sequence < layout.num_sequences(), where, "sequence", "out of range");
  detail::require(layer >= 0 && layer < layout.num_layers(), where, "layer", "out of range");
  detail::require(queries != nullptr, where, "queries", "null pointer");
  detail::require(output != nullptr, where, "output", "null pointer");
  const float scale = detail::logit_scale(shape, dims);
  std::vector<float> gathered(static_cast<std::size_t>(dims)), weights(static_cast<std::size_t>(layout.capacity()));
  for (index_t qh = 0; qh < shape.query_heads; ++qh) {
    const index_t h = qh / group, head = cache.head_index(sequence, layer, h), length = cache.lengths[head], thin = pruned.thin_lengths[head];
    detail::require(length >= 0 && length <= detail::layer_capacity(layout, layer), where, "cache.lengths",
                    [&] { return "entry " + std::to_string(head) + " is " + std::to_string(length) + ", outside [0, capacity of its layer]"; });
    detail::require(thin >= 0 && thin <= length && length - thin <= pruned.tail_capacity && thin <= pruned.thin_capacity, where, "pruned.thin_lengths",
                    [&] { return "entry " + std::to_string(head) + " does not split the head's " + std::to_string(length) + " slots into thin and tail rows"; });
    const float* query = queries + qh * dims;
    const std::uint16_t* channels = pruned.channel_list(head);
    for (index_t i = 0; i < pruned.kept; ++i) gathered[i] = query[channels[i]];
    const std::int32_t* positions = cache.positions + cache.slot_index(sequence, layer, h, 0);
    float top = -INFINITY;
    for (index_t j = 0; j < length; ++j) {
      if (positions[j] > position) continue;
      weights[j] = scale * (j < thin ? detail::row_dot(gathered.data(), pruned.thin_row(head, j), pruned.kept)
                                     : detail::row_dot(query, pruned.tail_row(head, j - thin), dims));
      top = std::max(top, weights[j]);
    }
    float* out = output + qh * dims;
    for (index_t c = 0; c < dims; ++c) out[c] = 0.0f;
    if (top == -INFINITY) continue;
    float sum = 0.0f;
    for (index_t j = 0; j < length; ++j) {
      if (positions[j] > position) continue;
      const float p = std::exp(weights[j] - top);
      sum += p;
      const T* value = cache.values + layout.offset(sequence, layer, h, j);
      for (index_t c = 0; c < dims; ++c) out[c] += p * to_float(value[c * layout.dim_stride()]);
    }
    for (index_t c = 0; c < dims; ++c) out[c] /= sum;
  }
}

}  // namespace cpu

KVCOMPACT_NAMESPACE_END
