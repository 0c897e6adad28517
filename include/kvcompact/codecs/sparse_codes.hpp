// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief codecs::sparse_codes: a view of a CSR cache's codes and dictionaries (host or device memory),
/// and the per-entry math of attention over codes that the CPU (kvcompact::codecs::sparse_cache) and
/// the CUDA backend (kvcompact::cuda::sparse_attention) share.
#pragma once

#include <kvcompact/codecs/dictionary.hpp>
#include <kvcompact/numeric.hpp>
#include <kvcompact/types.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

namespace codecs {

/// @brief The storage of a CSR cache (@ref methods_csr_layout), as pointers into host or device memory:
/// per (layer, KV head, slot) the key's and the value's `terms` pairs of a 16-bit atom index and an fp16
/// weight, the heads' lengths, and the dictionaries in kvcompact::codecs::dictionary_set's order.
/// Trivially copyable: a kernel takes it by value.
struct sparse_codes {
  const std::uint16_t* indices = nullptr;  ///< [layers][kv_heads][capacity][key, value][terms] atom indices
  const half_t* weights = nullptr;         ///< same shape: the weights
  const std::int32_t* lengths = nullptr;   ///< [layers][kv_heads] entries each head holds
  const float* dictionaries = nullptr;     ///< [layers][kv_heads][key, value][atoms][head_dim] unit-norm atoms
  index_t layers = 0;                      ///< layers
  index_t kv_heads = 0;                    ///< KV heads per layer
  index_t capacity = 0;                    ///< slots per (layer, KV head)
  index_t terms = 0;                       ///< s: pairs per code
  index_t head_dim = 0;                    ///< entries of a key, a value and an atom
  index_t atoms = 0;                       ///< N: atoms per dictionary

  /// @brief Offset of a code's first pair in #indices and #weights.
  /// @param layer layer @param head KV head @param slot slot @param half key or value @return the element offset
  [[nodiscard]] KVCOMPACT_HOST_DEVICE std::size_t code_offset(index_t layer, index_t head, index_t slot, entry_half half) const {
    return static_cast<std::size_t>((((layer * kv_heads + head) * capacity + slot) * 2 + static_cast<index_t>(half)) * terms);
  }
  /// @brief The atoms of one dictionary. @param layer layer @param head KV head @param half keys or values
  /// @return [atoms][head_dim] floats
  [[nodiscard]] KVCOMPACT_HOST_DEVICE const float* atoms_of(index_t layer, index_t head, entry_half half) const {
    return dictionaries + static_cast<std::size_t>(((layer * kv_heads + head) * 2 + static_cast<index_t>(half)) * atoms * head_dim);
  }
  /// @brief Entries a head holds (as stored; callers check it against #capacity).
  /// @param layer layer @param head KV head @return the stored length
  [[nodiscard]] KVCOMPACT_HOST_DEVICE std::int32_t length(index_t layer, index_t head) const { return lengths[layer * kv_heads + head]; }
};

/// @brief Calls `visit(atom, weight)` for each of a code's `terms` pairs, in order (a pair of weight
/// 0 included: matching pursuit leaves unused pairs as index 0, weight 0).
/// @param codes the storage @param layer layer @param head KV head @param slot slot @param half key or value
/// @param visit callable taking (std::uint16_t atom, float weight)
KVCOMPACT_EXEC_CHECK_DISABLE
template <class Visit>
KVCOMPACT_HOST_DEVICE void for_each_term(const sparse_codes& codes, index_t layer, index_t head, index_t slot, entry_half half, Visit&& visit) {
  const std::size_t code = codes.code_offset(layer, head, slot, half);
  for (index_t t = 0; t < codes.terms; ++t) visit(codes.indices[code + static_cast<std::size_t>(t)], to_float(codes.weights[code + static_cast<std::size_t>(t)]));
}

/// @brief The unscaled logit of a slot from the query's projections on the key atoms
/// (@ref methods_csr_attention): `sum_m w_m projection(i_m)`, summed in term order.
/// @param codes the storage @param layer layer @param head KV head @param slot slot
/// @param projection callable taking (std::uint16_t atom), returning the query's dot product with that key
/// atom as a float (a kernel that checks the atom indices as it reads them looks up through it)
/// @return the logit before scaling
KVCOMPACT_EXEC_CHECK_DISABLE
template <class Projection>
  requires std::invocable<const Projection&, std::uint16_t>
KVCOMPACT_HOST_DEVICE float code_logit(const sparse_codes& codes, index_t layer, index_t head, index_t slot, const Projection& projection) {
  float logit = 0.0f;
  for_each_term(codes, layer, head, slot, entry_half::key, [&](std::uint16_t atom, float weight) { logit = fmaf(weight, projection(atom), logit); });
  return logit;
}

/// @brief The unscaled logit of a slot from the query's projections on the key atoms
/// (@ref methods_csr_attention): `sum_m w_m projected[i_m]`, summed in term order.
/// @param codes the storage @param layer layer @param head KV head @param slot slot
/// @param projected [atoms] the query's dot products with the head's key atoms
/// @return the logit before scaling
KVCOMPACT_HOST_DEVICE inline float code_logit(const sparse_codes& codes, index_t layer, index_t head, index_t slot, const float* projected) {
  return code_logit(codes, layer, head, slot, [projected](std::uint16_t atom) { return projected[atom]; });
}

}  // namespace codecs

KVCOMPACT_NAMESPACE_END
