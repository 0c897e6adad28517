// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Observation-window queries handed to prefill compression, and the attention shape.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/types.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Query heads and softmax scale of the model's attention.
struct attention_shape {
  index_t query_heads;  ///< query heads per layer (a multiple of the KV heads; GQA group = query_heads / kv_heads)
  float scale = 0.0f;   ///< logit scale; 0 means 1 / sqrt(head_dim)
  index_t head_dim = 0; ///< head dimension of the queries; checked against the cache's when non-zero (0: the cache's)
};

/// @brief The last `rows` queries of the prompt (post-RoPE), per sequence, storage layer and query head:
/// `queries[(((sequence * layers + layer) * query_heads + head) * rows + row) * head_dim + d]`, with
/// their logical positions `positions[sequence * rows + row]`. A query attends the keys whose position
/// is not greater than its own.
///
/// For a layer-condensed cache pass, per storage layer, the queries of any of its reader layers;
/// rows from several readers may be stacked to aggregate their scores.
struct query_window {
  const float* queries = nullptr;            ///< query vectors, fp32
  const std::int32_t* positions = nullptr;   ///< [sequences][rows] logical positions
  index_t rows = 0;                          ///< queries per (sequence, layer, head)
  index_t head_dim = 0;                      ///< dimension of the query vectors; checked against the cache's when non-zero (0: the cache's)

  /// @brief Offset of one query vector.
  /// @param sequence sequence @param layer storage layer @param head query head @param row window row
  /// @param layers storage layers @param query_heads query heads @param head_dim head dimension
  /// @return the element offset
  KVCOMPACT_HOST_DEVICE index_t offset(index_t sequence, index_t layer, index_t head, index_t row, index_t layers,
                                       index_t query_heads, index_t head_dim) const {
    return (((sequence * layers + layer) * query_heads + head) * rows + row) * head_dim;
  }
};

KVCOMPACT_NAMESPACE_END
