// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Checks of the per-layer offset tables of layouts whose layers live in separate tensors.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/types.hpp>

#include <string>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Checks a host-readable table of per-layer element offsets: every entry is non-negative and the
/// element ranges [offset, offset + footprint) of two layers do not overlap (so no layer writes
/// into another's tensor).
inline void validate_layer_offsets(const index_t* offsets, index_t layers, index_t footprint, const char* where, const char* argument) {
  require(offsets != nullptr, where, argument, "null pointer");
  for (index_t l = 0; l < layers; ++l) {
    if (offsets[l] < 0)
      throw error(where, argument,
                  "entry " + std::to_string(l) + " is " + std::to_string(offsets[l]) +
                      ": offsets are counted from the lowest layer's tensor, so none is negative");
    for (index_t other = 0; other < l; ++other)
      if (offsets[l] < offsets[other] + footprint && offsets[other] < offsets[l] + footprint)
        throw error(where, argument,
                    "layers " + std::to_string(other) + " and " + std::to_string(l) + " overlap (offsets " + std::to_string(offsets[other]) +
                        " and " + std::to_string(offsets[l]) + ", " + std::to_string(footprint) +
                        " elements each); layers sharing a tensor are a layouts::layer_condensed map");
  }
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
