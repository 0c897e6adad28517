// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief One storage layer's slice of a test window (what compress_prefill_layer() takes).
#pragma once

#include "support/reference.hpp"

namespace kvtest {

/// @brief The queries of storage layer @p layer of @p w as a one-layer window (same rows and positions).
inline random_window layer_window(const random_window& w, index_t layer) {
  random_window out = w;
  out.layers = 1;
  out.queries.clear();
  for (index_t s = 0; s < w.sequences; ++s)
    for (index_t g = 0; g < w.query_heads; ++g)
      for (index_t r = 0; r < w.rows; ++r) {
        const float* q = w.query(s, layer, g, r);
        out.queries.insert(out.queries.end(), q, q + w.head_dim);
      }
  return out;
}

}  // namespace kvtest
