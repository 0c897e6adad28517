// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief A user-defined cache layout written outside namespace kvcompact (to prove that the
/// kvcompact::kv_layout concept is all a layout needs), plus layout-generic owned storage, a copy of a
/// kvtest::random_cache into any layout, random paged layouts, a session runner and a logical
/// snapshot of a cache, so tests can run the same data through several layouts and compare.
#pragma once

#include "support/reference.hpp"

#include <kvcompact/cpu/session.hpp>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/layouts/paged.hpp>

#include <bit>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

/// @brief Test-only user layout: memory order [slot][layer][sequence][dim][kv_head], so the head
/// dimension is interleaved across heads (`dim_stride() == kv_heads`) and slots are outermost.
/// Deliberately not in namespace kvcompact.
struct slot_major_interleaved {
  kvcompact::index_t sequences;  ///< batch
  kvcompact::index_t layers;     ///< storage layers
  kvcompact::index_t kv_heads;   ///< KV heads
  kvcompact::index_t slots;      ///< capacity per head
  kvcompact::index_t dims;       ///< head dimension

  kvcompact::index_t num_sequences() const { return sequences; }
  kvcompact::index_t num_layers() const { return layers; }
  kvcompact::index_t num_kv_heads() const { return kv_heads; }
  kvcompact::index_t capacity() const { return slots; }
  kvcompact::index_t head_dim() const { return dims; }
  kvcompact::index_t dim_stride() const { return kv_heads; }
  /// ((slot * layers + layer) * sequences + sequence) * dims * kv_heads + kv_head
  kvcompact::index_t offset(kvcompact::index_t sequence, kvcompact::index_t layer, kvcompact::index_t kv_head, kvcompact::index_t slot) const {
    return ((slot * layers + layer) * sequences + sequence) * dims * kv_heads + kv_head;
  }
  /// Elements one K (or V) buffer needs.
  kvcompact::index_t elements() const { return slots * layers * sequences * dims * kv_heads; }
  /// Optional validation hook (called by the library before it touches memory).
  void validate(const char* where) const {
    if (sequences <= 0 || layers <= 0 || kv_heads <= 0 || slots <= 0 || dims <= 0)
      throw kvcompact::error(where, "layout", "slot_major_interleaved extents must be positive");
  }
};
static_assert(kvcompact::kv_layout<slot_major_interleaved>, "the custom test layout must satisfy kvcompact::kv_layout");

/// @brief Test-only user layout usable in device code, also outside namespace kvcompact: memory order
/// [kv_head][layer][sequence][slot][dim] with three padding elements after every slot (so most rows of
/// 2-byte elements start off a 16-byte boundary).
struct head_major_padded {
  kvcompact::index_t sequences;  ///< batch
  kvcompact::index_t layers;     ///< storage layers
  kvcompact::index_t kv_heads;   ///< KV heads
  kvcompact::index_t slots;      ///< capacity per head
  kvcompact::index_t dims;       ///< head dimension
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_sequences() const { return sequences; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_layers() const { return layers; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_kv_heads() const { return kv_heads; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t capacity() const { return slots; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t head_dim() const { return dims; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t dim_stride() const { return 1; }
  /// (((kv_head * layers + layer) * sequences + sequence) * slots + slot) * (dims + 3)
  KVCOMPACT_HOST_DEVICE kvcompact::index_t offset(kvcompact::index_t sequence, kvcompact::index_t layer, kvcompact::index_t kv_head,
                                                  kvcompact::index_t slot) const {
    return (((kv_head * layers + layer) * sequences + sequence) * slots + slot) * (dims + 3);
  }
};
static_assert(kvcompact::kv_layout<head_major_padded>, "the padded test layout must satisfy kvcompact::kv_layout");

namespace kvtest {

/// @brief Raw bits of a stored element (exact comparison of float, half_t and bfloat16_t).
inline std::uint32_t element_bits(float x) { return std::bit_cast<std::uint32_t>(x); }
inline std::uint32_t element_bits(kvcompact::half_t x) { return x.bits; }
inline std::uint32_t element_bits(kvcompact::bfloat16_t x) { return x.bits; }

/// @brief One past the largest element offset a layout addresses (scans every element, each layer up to
/// its own capacity: small caches only). Slots the layout does not map (slot_in_range false: pages a request does not own) are skipped.
template <class Layout>
index_t storage_elements(const Layout& layout) {
  index_t top = 0;
  for (index_t s = 0; s < layout.num_sequences(); ++s)
    for (index_t l = 0; l < layout.num_layers(); ++l)
      for (index_t h = 0; h < layout.num_kv_heads(); ++h)
        for (index_t j = 0; j < kvcompact::detail::layer_capacity(layout, l); ++j)
          if (kvcompact::detail::slot_in_range(layout, s, j))
            top = std::max(top, layout.offset(s, l, h, j) + (layout.head_dim() - 1) * layout.dim_stride() + 1);
  return top;
}

/// @brief Owned K/V/lengths/positions for any layout (the layout may point into `block_table`).
template <class T, class Layout>
struct layout_cache {
  Layout layout;                        ///< the layout
  std::vector<T> keys;                  ///< key storage
  std::vector<T> values;                ///< value storage
  std::vector<std::int32_t> lengths;    ///< [s][l][h]
  std::vector<std::int32_t> positions;  ///< [s][l][h][capacity]

  /// @brief Library view (pointers into this object).
  kvcompact::kv_cache<T, Layout> view() { return {layout, keys.data(), values.data(), lengths.data(), positions.data()}; }
  /// @brief Element index of (s, l, h, j, d).
  index_t element(index_t s, index_t l, index_t h, index_t j, index_t d) const { return layout.offset(s, l, h, j) + d * layout.dim_stride(); }
  /// @brief Flat head index.
  index_t head_index(index_t s, index_t l, index_t h) const { return (s * layout.num_layers() + l) * layout.num_kv_heads() + h; }
};

/// @brief Copies every slot the layout maps (valid or not; in a layer with fewer slots than @p source, its
/// first ones), length and position of @p source into a new cache with @p layout. Storage not addressed by the layout is filled with a recognisable pattern
/// (bits 0x7777 / 0x77777777).
template <class T, class Layout>
layout_cache<T, Layout> copy_into(const random_cache<T>& source, const Layout& layout) {
  layout_cache<T, Layout> out{layout, {}, {}, source.lengths, source.positions};
  const auto n = static_cast<std::size_t>(storage_elements(layout));
  T filler{};
  if constexpr (std::is_same_v<T, float>) filler = std::bit_cast<float>(0x77777777u);
  else filler.bits = 0x7777;
  out.keys.assign(n, filler);
  out.values.assign(n, filler);
  const cache_shape& sh = source.shape;
  for (index_t s = 0; s < sh.sequences; ++s)
    for (index_t l = 0; l < sh.layers; ++l)
      for (index_t h = 0; h < sh.kv_heads; ++h)
        for (index_t j = 0; j < std::min(sh.capacity, kvcompact::detail::layer_capacity(layout, l)); ++j)
          for (index_t d = 0; d < sh.head_dim && kvcompact::detail::slot_in_range(layout, s, j); ++d) {
            const auto from = static_cast<std::size_t>(source.element(s, l, h, j, d));
            const auto to = static_cast<std::size_t>(out.element(s, l, h, j, d));
            out.keys[to] = source.keys[from];
            out.values[to] = source.values[from];
          }
  return out;
}

/// @brief A block table with every page of every sequence distinct and randomly permuted, plus the
/// paged layout over it (one pool per layer, `spare` unused pages per pool).
struct random_paging {
  std::vector<std::int32_t> table;  ///< [sequences][table_stride]
  kvcompact::layouts::paged layout; ///< points into table (do not copy this object after building the layout)
};

/// @brief Fills @p out with a random permuted block table and a paged layout of the given extents.
/// @param capacity must be a multiple of page_size
inline void make_random_paging(random_paging& out, const cache_shape& shape, index_t page_size, kvcompact::layouts::page_format format,
                               index_t spare, std::uint32_t seed) {
  const index_t pages_per_sequence = shape.capacity / page_size;
  const index_t table_stride = pages_per_sequence + 1;  // one padding entry per row
  const index_t num_pages = shape.sequences * pages_per_sequence + spare;
  std::vector<std::int32_t> pool(static_cast<std::size_t>(num_pages));
  std::iota(pool.begin(), pool.end(), 0);
  std::mt19937 rng(seed);
  shuffle_portable(pool, rng);
  out.table.assign(static_cast<std::size_t>(shape.sequences * table_stride), -1);  // padding entries: never read
  for (index_t s = 0; s < shape.sequences; ++s)
    for (index_t p = 0; p < pages_per_sequence; ++p)
      out.table[static_cast<std::size_t>(s * table_stride + p)] = pool[static_cast<std::size_t>(s * pages_per_sequence + p)];
  const index_t page_elements = page_size * shape.kv_heads * shape.head_dim;
  out.layout = kvcompact::layouts::paged{out.table.data(), table_stride, pages_per_sequence, shape.sequences, shape.layers, shape.kv_heads,
                                         shape.head_dim, page_size, num_pages, num_pages * page_elements, format};
}

/// @brief State and workspace buffers of a session, sized by the session's own functions (8-byte aligned).
template <class Policy, class T, class Layout>
struct session_storage {
  std::vector<std::uint64_t> state;      ///< state words
  std::vector<std::uint64_t> workspace;  ///< workspace words
  session_storage(const Layout& layout, const kvcompact::attention_shape& shape)
      : state((kvcompact::cpu::session<Policy, T, Layout>::state_bytes(layout) + 7) / 8),
        workspace((kvcompact::cpu::session<Policy, T, Layout>::workspace_bytes(layout, shape) + 7) / 8) {}
  /// @brief The state span. @return bytes
  std::span<std::byte> state_span() { return std::as_writable_bytes(std::span(state)); }
  /// @brief The workspace span. @return bytes
  std::span<std::byte> workspace_span() { return std::as_writable_bytes(std::span(workspace)); }
};

/// @brief Builds a session over @p cache and runs compress_prefill(window) once.
template <class Policy, class T, class Layout>
void run_prefill(const Policy& policy, const kvcompact::kv_cache<T, Layout>& cache, const kvcompact::attention_shape& shape,
                 const kvcompact::query_window& window) {
  session_storage<Policy, T, Layout> storage(cache.layout, shape);
  kvcompact::cpu::session<Policy, T, Layout> session(policy, cache, shape, storage.state_span(), storage.workspace_span());
  session.compress_prefill(window);
}

/// @brief Layout-independent content of a cache: per head (s, l, h) its length, the positions of its valid
/// slots in slot order and the raw bits of their keys and values. Two caches with equal snapshots hold the
/// same logical data bit for bit.
struct snapshot {
  std::vector<std::int32_t> lengths;                   ///< [head]
  std::vector<std::vector<std::int32_t>> positions;    ///< [head][slot]
  std::vector<std::vector<std::uint32_t>> key_bits;    ///< [head][slot * head_dim + d]
  std::vector<std::vector<std::uint32_t>> value_bits;  ///< [head][slot * head_dim + d]
  bool operator==(const snapshot&) const = default;
};

/// @brief Takes the snapshot of a cache view.
template <class T, class Layout>
snapshot take_snapshot(const kvcompact::kv_cache<T, Layout>& c) {
  snapshot out;
  const auto& L = c.layout;
  for (index_t s = 0; s < L.num_sequences(); ++s)
    for (index_t l = 0; l < L.num_layers(); ++l)
      for (index_t h = 0; h < L.num_kv_heads(); ++h) {
        const index_t head = c.head_index(s, l, h);
        const std::int32_t n = c.lengths[head];
        out.lengths.push_back(n);
        std::vector<std::int32_t> pos;
        std::vector<std::uint32_t> kb, vb;
        for (index_t j = 0; j < n; ++j) {
          pos.push_back(c.positions[c.slot_index(s, l, h, j)]);
          for (index_t d = 0; d < L.head_dim(); ++d) {
            const index_t e = L.offset(s, l, h, j) + d * L.dim_stride();
            kb.push_back(element_bits(c.keys[e]));
            vb.push_back(element_bits(c.values[e]));
          }
        }
        out.positions.push_back(std::move(pos));
        out.key_bits.push_back(std::move(kb));
        out.value_bits.push_back(std::move(vb));
      }
  return out;
}

}  // namespace kvtest
