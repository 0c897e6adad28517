// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The math of key-channel selection shared by both backends: channel energies, the channel
/// ranking and the logit of a pruned key row.
#pragma once

#include <kvcompact/kv_cache.hpp>
#include <kvcompact/numeric.hpp>
#include <kvcompact/query_window.hpp>

#include <math.h>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Mean square, in channel @p c, of the window queries of the query heads [first_head, first_head +
/// group) of one (sequence, storage layer); fused multiply-adds in (head, row) order, so every backend
/// gets the same bits.
KVCOMPACT_HOST_DEVICE inline float query_energy(const query_window& window, index_t sequence, index_t layer, index_t first_head, index_t group,
                                                index_t layers, index_t query_heads, index_t dims, index_t c) {
  float sum = 0.0f;
  for (index_t g = 0; g < group; ++g)
    for (index_t r = 0; r < window.rows; ++r) {
      const float q = window.queries[window.offset(sequence, layer, first_head + g, r, layers, query_heads, dims) + c];
      sum = fmaf(q, q, sum);
    }
  return sum / static_cast<float>(group * window.rows);
}

/// Mean square, in channel @p c, of the keys of slots [0, length) of one head (slot order, fused
/// multiply-adds); 0 for an empty head.
template <class T, class Layout>
KVCOMPACT_HOST_DEVICE float key_energy(const kv_cache<T, Layout>& cache, index_t sequence, index_t layer, index_t head, index_t length, index_t c) {
  float sum = 0.0f;
  for (index_t j = 0; j < length; ++j) {
    const float k = to_float(cache.keys[cache.layout.offset(sequence, layer, head, j) + c * cache.layout.dim_stride()]);
    sum = fmaf(k, k, sum);
  }
  return length > 0 ? sum / static_cast<float>(length) : 0.0f;
}

/// Whether channel @p c is among the @p kept best of @p dims scores: higher score first, among equal
/// scores the lower channel (so the higher channel is dropped first). NaN scores rank last.
KVCOMPACT_HOST_DEVICE inline bool channel_is_kept(const float* scores, index_t dims, index_t c, index_t kept) {
  const float mine = scores[c] == scores[c] ? scores[c] : -INFINITY;
  index_t before = 0;
  for (index_t k = 0; k < dims; ++k) {
    const float other = scores[k] == scores[k] ? scores[k] : -INFINITY;
    before += (other > mine || (other == mine && k < c)) ? 1 : 0;
  }
  return before < kept;
}

/// Dot product of a gathered query (the head's kept channels) with a row of @p count elements, in
/// channel order.
template <class T>
KVCOMPACT_HOST_DEVICE float row_dot(const float* query, const T* row, index_t count) {
  float sum = 0.0f;
  for (index_t i = 0; i < count; ++i) sum = fmaf(query[i], to_float(row[i]), sum);
  return sum;
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
