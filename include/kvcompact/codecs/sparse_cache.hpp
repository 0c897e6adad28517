// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief codecs::sparse_cache: a KV cache whose entries are sparse codes over dictionaries (CSR), with
/// attention computed on the codes (CPU backend).
#pragma once

#include <kvcompact/codecs/dictionary.hpp>
#include <kvcompact/codecs/matching_pursuit.hpp>
#include <kvcompact/codecs/sparse_codes.hpp>
#include <kvcompact/detail/channel_ranking.hpp>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/numeric.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

KVCOMPACT_NAMESPACE_BEGIN

namespace codecs {

/// @brief A CSR cache (@ref methods_csr_layout): per layer, KV head and slot, the key and the value are
/// each `terms` pairs of a 16-bit atom index and an fp16 weight over that (layer, head)'s dictionary,
/// plus the token's position. Entries are encoded by matching pursuit when appended; attention reads
/// the codes only (@ref methods_csr_attention).
class sparse_cache {
 public:
  /// @brief An empty cache.
  /// @param dictionaries the dictionaries (copied) @param layers layers @param kv_heads KV heads @param head_dim head dimension
  /// @param capacity slots per (layer, head) @param terms s, pairs per code
  /// @param expected_model the model the engine runs (empty: not checked)
  /// @throws kvcompact::error naming `capacity` or `terms` (not positive), or `dictionary` (kvcompact::codecs::dictionary_set::validate)
  sparse_cache(const dictionary_set& dictionaries, index_t layers, index_t kv_heads, index_t head_dim, index_t capacity, index_t terms,
               std::string_view expected_model = {})
      : dictionaries_(dictionaries), layers_(layers), kv_heads_(kv_heads), head_dim_(head_dim), capacity_(capacity), terms_(terms) {
    detail::require(capacity > 0, "sparse_cache", "capacity", "must be positive");
    detail::require(terms > 0, "sparse_cache", "terms", "must be positive");
    dictionaries_.validate(layers, kv_heads, head_dim, expected_model, "sparse_cache");
    const auto slots = static_cast<std::size_t>(layers * kv_heads * capacity);
    indices_.assign(slots * 2 * static_cast<std::size_t>(terms), 0);
    weights_.assign(indices_.size(), half_t{});
    positions_.assign(slots, -1);
    lengths_.assign(static_cast<std::size_t>(layers * kv_heads), 0);
  }

  /// @brief Encodes and stores one token's keys and values for every KV head of a layer.
  /// @param layer layer @param keys [kv_heads][head_dim] @param values [kv_heads][head_dim] @param position the token's position
  /// @throws kvcompact::error naming `layer` (out of range) or `cache` (a head is full; nothing is stored then)
  void append(index_t layer, const float* keys, const float* values, index_t position) {
    detail::require(layer >= 0 && layer < layers_, "sparse_cache::append", "layer", "out of range");
    for (index_t h = 0; h < kv_heads_; ++h)
      detail::require(length(layer, h) < capacity_, "sparse_cache::append", "cache", [&] { return "head " + std::to_string(h) + " of layer " + std::to_string(layer) + " is full"; });
    encoder scratch(head_dim_, terms_);
    for (index_t h = 0; h < kv_heads_; ++h) store(layer, h, keys + h * head_dim_, values + h * head_dim_, position, scratch);
  }

  /// @brief Replaces the contents with one sequence of a full-precision cache: every head's valid slots,
  /// in slot order, encoded with their positions (@ref methods_csr_eviction). After a kvcompact policy
  /// compressed the cache (kvcompact::cpu::session::compress_prefill), only the entries it kept are encoded.
  /// @tparam T the cache's element @tparam Layout its kvcompact::kv_layout
  /// @param cache host cache with this cache's layers, KV heads and head_dim @param sequence the sequence to encode
  /// @throws kvcompact::error naming `cache` (another shape; kvcompact::kv_cache::validate), `sequence` (out of
  /// range) or `cache.lengths` (a head holds more entries than this cache's capacity); nothing is changed then
  template <class T, class Layout>
  void encode(const kv_cache<T, Layout>& cache, index_t sequence) {
    constexpr const char* where = "sparse_cache::encode";
    cache.validate(where);
    const Layout& layout = cache.layout;
    detail::require(layout.num_layers() == layers_ && layout.num_kv_heads() == kv_heads_ && layout.head_dim() == head_dim_, where, "cache", [&] {
      return "has " + std::to_string(layout.num_layers()) + " layers x " + std::to_string(layout.num_kv_heads()) + " KV heads x head_dim " +
             std::to_string(layout.head_dim()) + ", this sparse cache " + std::to_string(layers_) + " x " + std::to_string(kv_heads_) + " x " +
             std::to_string(head_dim_);
    });
    detail::require(sequence >= 0 && sequence < layout.num_sequences(), where, "sequence", "out of range");
    for (index_t i = 0; i < layers_ * kv_heads_; ++i)
      detail::require(cache.lengths[cache.head_index(sequence, i / kv_heads_, i % kv_heads_)] <= capacity_, where, "cache.lengths", [&] {
        return "head " + std::to_string(i % kv_heads_) + " of layer " + std::to_string(i / kv_heads_) + " holds more entries than the sparse cache's capacity " +
               std::to_string(capacity_);
      });
    clear();
    encoder scratch(head_dim_, terms_);
    std::vector<float> key(static_cast<std::size_t>(head_dim_)), value(key.size());
    for (index_t l = 0; l < layers_; ++l)
      for (index_t h = 0; h < kv_heads_; ++h)
        for (index_t j = 0; j < cache.lengths[cache.head_index(sequence, l, h)]; ++j) {
          const index_t row = layout.offset(sequence, l, h, j);
          for (index_t d = 0; d < head_dim_; ++d) {
            key[static_cast<std::size_t>(d)] = to_float(cache.keys[row + d * layout.dim_stride()]);
            value[static_cast<std::size_t>(d)] = to_float(cache.values[row + d * layout.dim_stride()]);
          }
          store(l, h, key.data(), value.data(), cache.positions[cache.slot_index(sequence, l, h, j)], scratch);
        }
  }

  /// @brief Evicts entries of one head: the slots whose flag in @p keep is set move, in slot order, to
  /// the front, their codes and positions unchanged bit for bit; the head's length becomes their count
  /// (@ref methods_csr_eviction).
  /// @param layer layer @param head KV head @param keep [length(layer, head)] nonzero: the slot stays
  /// @return the new length
  /// @throws kvcompact::error naming `layer`, `head` (out of range) or `keep` (not one flag per entry)
  index_t compact(index_t layer, index_t head, std::span<const std::uint8_t> keep) {
    constexpr const char* where = "sparse_cache::compact";
    detail::require(layer >= 0 && layer < layers_, where, "layer", "out of range");
    detail::require(head >= 0 && head < kv_heads_, where, "head", "out of range");
    std::int32_t& count = lengths_[static_cast<std::size_t>(layer * kv_heads_ + head)];
    detail::require(keep.size() == static_cast<std::size_t>(count), where, "keep", [&] { return "must hold one flag per entry (" + std::to_string(count) + ")"; });
    const std::size_t code = static_cast<std::size_t>(2 * terms_);
    std::int32_t kept = 0;
    for (index_t j = 0; j < count; ++j) {
      if (!keep[static_cast<std::size_t>(j)]) continue;
      if (kept != j) {
        const std::size_t from = code_offset(layer, head, j, entry_half::key), to = code_offset(layer, head, kept, entry_half::key);
        std::copy_n(indices_.begin() + static_cast<std::ptrdiff_t>(from), code, indices_.begin() + static_cast<std::ptrdiff_t>(to));
        std::copy_n(weights_.begin() + static_cast<std::ptrdiff_t>(from), code, weights_.begin() + static_cast<std::ptrdiff_t>(to));
        positions_[slot_index(layer, head, kept)] = positions_[slot_index(layer, head, j)];
      }
      ++kept;
    }
    return count = kept;
  }

  /// @brief Decode attention of one token's queries over every stored entry of a layer, on the codes:
  /// per query head `p = D_K q` once, a logit is `scale * sum_m w_m p[i_m]` (kvcompact::codecs::code_logit);
  /// the softmax weights are scattered into `h[N]` through the value codes (kvcompact::codecs::for_each_term)
  /// and the output is `D_V^T h`. kvcompact::cuda::sparse_attention runs the same per-entry math on the GPU.
  /// @param layer layer @param queries [query_heads][head_dim] @param query_heads query heads (a multiple of kv_heads)
  /// @param scale logit scale @param output [query_heads][head_dim]
  /// @throws kvcompact::error naming `layer` (out of range) or `query_heads` (not a positive multiple of the KV heads)
  void attend(index_t layer, const float* queries, index_t query_heads, float scale, float* output) const {
    detail::require(layer >= 0 && layer < layers_, "sparse_cache::attend", "layer", "out of range");
    detail::require(query_heads > 0 && query_heads % kv_heads_ == 0, "sparse_cache::attend", "query_heads", "must be a positive multiple of the KV heads");
    const sparse_codes view = codes();
    const index_t group = query_heads / kv_heads_, n_atoms = dictionaries_.atoms;
    std::vector<float> projected(static_cast<std::size_t>(n_atoms)), histogram(static_cast<std::size_t>(n_atoms)), logits;
    for (index_t g = 0; g < query_heads; ++g) {
      const index_t h = g / group, length = view.length(layer, h);
      const float* keys = view.atoms_of(layer, h, entry_half::key);
      const float* q = queries + g * head_dim_;
      for (index_t k = 0; k < n_atoms; ++k) projected[static_cast<std::size_t>(k)] = detail::row_dot(q, keys + k * head_dim_, head_dim_);
      logits.assign(static_cast<std::size_t>(length), 0.0f);
      float top = -INFINITY;
      for (index_t j = 0; j < length; ++j) {
        logits[static_cast<std::size_t>(j)] = scale * code_logit(view, layer, h, j, projected.data());
        top = logits[static_cast<std::size_t>(j)] > top ? logits[static_cast<std::size_t>(j)] : top;
      }
      float sum = 0.0f;
      for (float& x : logits) sum += (x = std::exp(x - top));
      histogram.assign(histogram.size(), 0.0f);
      for (index_t j = 0; j < length; ++j) {
        const float a = logits[static_cast<std::size_t>(j)] / sum;
        for_each_term(view, layer, h, j, entry_half::value, [&](std::uint16_t atom, float weight) { histogram[atom] += a * weight; });
      }
      const float* values = view.atoms_of(layer, h, entry_half::value);
      float* out = output + g * head_dim_;
      for (index_t d = 0; d < head_dim_; ++d) out[d] = 0.0f;
      for (index_t k = 0; k < n_atoms; ++k)
        if (histogram[static_cast<std::size_t>(k)] != 0.0f)
          for (index_t d = 0; d < head_dim_; ++d) out[d] += histogram[static_cast<std::size_t>(k)] * values[k * head_dim_ + d];
    }
  }

  /// @brief The vector a stored code stands for. @param layer layer @param head KV head @param slot slot
  /// @param half key or value @param out [head_dim] the decoded vector
  void decode(index_t layer, index_t head, index_t slot, entry_half half, float* out) const {
    const sparse_codes view = codes();
    const float* atoms = view.atoms_of(layer, head, half);
    for (index_t d = 0; d < head_dim_; ++d) out[d] = 0.0f;
    for_each_term(view, layer, head, slot, half, [&](std::uint16_t atom, float weight) {
      for (index_t d = 0; d < head_dim_; ++d) out[d] += weight * atoms[atom * head_dim_ + d];
    });
  }

  /// @brief The cache's storage as a kvcompact::codecs::sparse_codes view over host memory (valid until
  /// the cache is destroyed; an engine copies the arrays it points to into device memory for
  /// kvcompact::cuda::sparse_attention). @return the view
  [[nodiscard]] sparse_codes codes() const {
    return {indices_.data(), weights_.data(), lengths_.data(), dictionaries_.data.data(), layers_, kv_heads_, capacity_, terms_, head_dim_, dictionaries_.atoms};
  }

  /// @brief Entries a head holds. @param layer layer @param head KV head @return the length
  [[nodiscard]] index_t length(index_t layer, index_t head) const { return lengths_[static_cast<std::size_t>(layer * kv_heads_ + head)]; }
  /// @brief Position of a stored entry. @param layer layer @param head KV head @param slot slot @return the position
  [[nodiscard]] index_t position(index_t layer, index_t head, index_t slot) const { return positions_[slot_index(layer, head, slot)]; }
  /// @brief Removes every entry (the dictionaries stay).
  void clear() { lengths_.assign(lengths_.size(), 0); }

  /// @brief Storage of one key or value element in bits, as this cache stores codes (16-bit index, fp16 weight).
  /// @return `terms * 32 / head_dim`
  [[nodiscard]] double stored_bits_per_element() const { return static_cast<double>(terms_) * 32.0 / static_cast<double>(head_dim_); }
  /// @brief The same with the index in `ceil(log2 atoms)` bits (a packed layout; @ref methods_csr_bits).
  /// @return `terms * (ceil(log2 atoms) + 16) / head_dim`
  [[nodiscard]] double packed_bits_per_element() const {
    const double index_bits = std::ceil(std::log2(static_cast<double>(dictionaries_.atoms)));
    return static_cast<double>(terms_) * (index_bits + 16.0) / static_cast<double>(head_dim_);
  }

 private:
  /// Scratch of matching pursuit for one vector.
  struct encoder {
    std::vector<float> residual, weights;
    encoder(index_t dims, index_t terms) : residual(static_cast<std::size_t>(dims)), weights(static_cast<std::size_t>(terms)) {}
  };

  [[nodiscard]] std::size_t code_offset(index_t layer, index_t head, index_t slot, entry_half half) const { return codes().code_offset(layer, head, slot, half); }
  [[nodiscard]] std::size_t slot_index(index_t layer, index_t head, index_t slot) const {
    return static_cast<std::size_t>((layer * kv_heads_ + head) * capacity_ + slot);
  }
  /// Encodes one entry into the next slot of a head that has room.
  void store(index_t layer, index_t head, const float* key, const float* value, index_t position, encoder& scratch) {
    std::int32_t& length = lengths_[static_cast<std::size_t>(layer * kv_heads_ + head)];
    for (int half = 0; half < 2; ++half) {
      const auto which = static_cast<entry_half>(half);
      const std::size_t code = code_offset(layer, head, length, which);
      matching_pursuit(half == 0 ? key : value, dictionaries_.atoms_of(layer, head, which), dictionaries_.atoms, head_dim_, terms_, scratch.residual.data(),
                       indices_.data() + code, scratch.weights.data());
      for (index_t t = 0; t < terms_; ++t) weights_[code + static_cast<std::size_t>(t)] = from_float<half_t>(scratch.weights[static_cast<std::size_t>(t)]);
    }
    positions_[slot_index(layer, head, length)] = static_cast<std::int32_t>(position);
    ++length;
  }

  dictionary_set dictionaries_;
  index_t layers_, kv_heads_, head_dim_, capacity_, terms_;
  std::vector<std::uint16_t> indices_;   // [layer][head][slot][key, value][terms]
  std::vector<half_t> weights_;          // same shape
  std::vector<std::int32_t> positions_;  // [layer][head][slot]
  std::vector<std::int32_t> lengths_;    // [layer][head]
};

}  // namespace codecs

KVCOMPACT_NAMESPACE_END
