// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Parts of a test window: one storage layer's queries (what compress_prefill_layer() takes) and
/// one tensor-parallel rank's query heads.
#pragma once

#include "support/reference.hpp"

namespace kvtest {

/// @brief The queries of storage layers [first_layer, first_layer + layers) and query heads
/// [first_head, first_head + heads) of @p w, as a window of their own (same rows and positions).
inline random_window window_part(const random_window& w, index_t first_layer, index_t layers, index_t first_head, index_t heads) {
  random_window out = w;
  out.layers = layers;
  out.query_heads = heads;
  out.queries.clear();
  for (index_t s = 0; s < w.sequences; ++s)
    for (index_t l = first_layer; l < first_layer + layers; ++l)
      for (index_t g = first_head; g < first_head + heads; ++g)
        for (index_t r = 0; r < w.rows; ++r) {
          const float* q = w.query(s, l, g, r);
          out.queries.insert(out.queries.end(), q, q + w.head_dim);
        }
  return out;
}

/// @brief The queries of storage layer @p layer of @p w as a one-layer window (same rows and positions).
inline random_window layer_window(const random_window& w, index_t layer) { return window_part(w, layer, 1, 0, w.query_heads); }

}  // namespace kvtest
