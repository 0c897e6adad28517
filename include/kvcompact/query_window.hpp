// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Observation-window queries handed to prefill compression, and the attention shape.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/types.hpp>

#include <cmath>
#include <cstdint>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Query heads and softmax scale of the model's attention.
struct attention_shape {
  index_t query_heads;  ///< query heads per layer (a multiple of the KV heads; GQA group = query_heads / kv_heads)
  float scale = 0.0f;   ///< logit scale, finite and not negative; 0 means 1 / sqrt(head_dim)
  index_t head_dim = 0; ///< head dimension of the queries; checked against the cache's when non-zero (0: the cache's)

  /// @brief Checks the shape against a cache: query heads a positive multiple of @p kv_heads,
  /// head_dim 0 or @p cache_head_dim, scale finite and not negative.
  /// @param kv_heads the cache's KV heads @param cache_head_dim the cache's head dimension
  /// @param where name of the calling entry point, used in error messages
  /// @throws kvcompact::error naming "shape.query_heads", "shape.head_dim" or "shape.scale"
  void validate(index_t kv_heads, index_t cache_head_dim, const char* where) const {
    detail::require(query_heads > 0 && kv_heads > 0 && query_heads % kv_heads == 0, where, "shape.query_heads",
                    [&] { return "is " + std::to_string(query_heads) + ", must be a positive multiple of the " + std::to_string(kv_heads) + " KV heads"; });
    detail::require(head_dim == 0 || head_dim == cache_head_dim, where, "shape.head_dim",
                    [&] { return "is " + std::to_string(head_dim) + " but the cache's head_dim is " + std::to_string(cache_head_dim); });
    detail::require(std::isfinite(scale) && scale >= 0.0f, where, "shape.scale",
                    [&] { return "is " + std::to_string(scale) + ": must be finite and not negative (0 selects 1/sqrt(head_dim))"; });
  }
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
