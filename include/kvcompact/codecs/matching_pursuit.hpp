// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Matching pursuit: a vector as a few weighted atoms of a dictionary (CSR's entry encoding,
/// host and device code).
#pragma once

#include <kvcompact/types.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

namespace codecs {

/// @brief Encodes @p x by matching pursuit (@ref methods_csr_encoding): @p terms times, the atom with
/// the largest |<residual, atom>| (the lower index on ties) takes the projection as its weight and the
/// residual loses it. An atom chosen twice keeps one entry with the summed weight; unused entries get
/// index 0 and weight 0.
/// @param x the vector (@p dim entries) @param atoms [count][dim] unit-norm atoms
/// @param count atoms (at most 65536) @param dim vector length @param terms s, entries of the code
/// @param residual scratch of @p dim floats (holds the final residual on return)
/// @param indices [terms] atom of each entry @param weights [terms] weight of each entry
/// @return the number of distinct atoms used
KVCOMPACT_HOST_DEVICE inline index_t matching_pursuit(const float* x, const float* atoms, index_t count, index_t dim, index_t terms, float* residual,
                                                      std::uint16_t* indices, float* weights) {
  for (index_t d = 0; d < dim; ++d) residual[d] = x[d];
  for (index_t t = 0; t < terms; ++t) indices[t] = 0, weights[t] = 0.0f;
  index_t used = 0;
  for (index_t t = 0; t < terms; ++t) {
    index_t best = 0;
    float best_dot = 0.0f, best_magnitude = -1.0f;
    for (index_t k = 0; k < count; ++k) {
      float dot = 0.0f;
      for (index_t d = 0; d < dim; ++d) dot += residual[d] * atoms[k * dim + d];
      const float magnitude = dot < 0.0f ? -dot : dot;
      if (magnitude > best_magnitude) best = k, best_dot = dot, best_magnitude = magnitude;
    }
    for (index_t d = 0; d < dim; ++d) residual[d] -= best_dot * atoms[best * dim + d];
    index_t entry = 0;
    while (entry < used && indices[entry] != best) ++entry;
    if (entry == used) indices[used++] = static_cast<std::uint16_t>(best);
    weights[entry] += best_dot;
  }
  return used;
}

}  // namespace codecs

KVCOMPACT_NAMESPACE_END
