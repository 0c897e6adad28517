// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Layer-condensed caches: several model layers read one cache layer (LCKV, CLA, YOCO).
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/layouts/concepts.hpp>

#include <cstdint>
#include <string>
#include <string_view>

KVCOMPACT_NAMESPACE_BEGIN

namespace layouts {

/// @brief Which cache layer each model layer reads, and how (@ref methods_lckv_map).
///
/// Model layer `l` reads the KV of model layer `c(l)`. Only layers that some layer reads compute and
/// store KV; they are numbered densely as storage layers in ascending order. A layer with
/// `c(l) > l` reads ahead: at decode step `t` it sees only positions `< t` (its own entry does not
/// exist yet). A sliding layer sees only the last `window` positions, and the first `sinks` positions
/// (0 unless set: a trained sliding-window model has no sinks; the training-free approximation of
/// @ref methods_mixattention_approximation keeps them).
struct layer_map {
  static constexpr int max_layers = 256;  ///< most model layers a map can describe
  int model_layers = 0;                   ///< number of model layers
  int cache_layers = 0;                   ///< number of storage (cache) layers
  int window = 0;                         ///< window of sliding layers, in positions
  int sinks = 0;                          ///< first positions sliding layers still see
  std::int16_t source[max_layers] = {};   ///< c(l): the model layer whose KV layer l reads
  std::int16_t storage[max_layers] = {};  ///< storage layer holding c(l)
  bool sliding[max_layers] = {};          ///< layer l attends only the last `window` positions
  bool exclude_current[max_layers] = {};  ///< force the diagonal mask (LCKV's force_nodiag) on layer l

  /// @brief Parses LCKV's configuration string, one entry per layer separated by '_', each the
  /// source layer optionally followed by 's' (sliding): "0_20_20_20_21", "0s_1s_2_2".
  /// @param spec the configuration string
  /// @param sliding_window window of the layers marked 's'
  /// @param sliding_sinks first positions the layers marked 's' still see
  /// @return the map
  /// @throws kvcompact::error on a malformed string or a source outside [0, layers) (`spec`), a window
  /// below 1 when a layer slides (`sliding_window`), negative sinks (`sliding_sinks`)
  static layer_map parse(std::string_view spec, int sliding_window = 4096, int sliding_sinks = 0) {
    layer_map m;
    m.window = sliding_window;
    m.sinks = sliding_sinks;
    std::size_t begin = 0;
    while (begin <= spec.size()) {
      const std::size_t end = spec.find('_', begin);
      std::string_view entry = spec.substr(begin, end == std::string_view::npos ? std::string_view::npos : end - begin);
      detail::require(!entry.empty(), "layer_map::parse", "spec", "empty entry in \"" + std::string(spec) + "\"");
      detail::require(m.model_layers < max_layers, "layer_map::parse", "spec", "more than 256 layers");
      bool is_sliding = false;
      if (entry.back() == 's') {
        is_sliding = true;
        entry.remove_suffix(1);
        detail::require(!entry.empty(), "layer_map::parse", "spec", "entry \"s\" has no layer number in \"" + std::string(spec) + "\"");
      }
      int value = 0;
      for (char c : entry) {
        detail::require(c >= '0' && c <= '9', "layer_map::parse", "spec", "entry \"" + std::string(entry) + "\" is not a layer number");
        value = value * 10 + (c - '0');
        detail::require(value < max_layers, "layer_map::parse", "spec", "entry \"" + std::string(entry) + "\" is beyond the 256-layer limit");
      }
      m.source[m.model_layers] = static_cast<std::int16_t>(value);
      m.sliding[m.model_layers] = is_sliding;
      ++m.model_layers;
      if (end == std::string_view::npos) break;
      begin = end + 1;
    }
    m.assign_storage();
    m.check_window("layer_map::parse", "sliding_window", "sliding_sinks");
    return m;
  }

  /// @brief The Character.AI-style MixAttention pattern (@ref methods_mixattention_pattern): layer 0 full
  /// with its own KV, then blocks of six layers `[S own, S reuse, S own, S reuse, S reuse, F reuse 0]`
  /// (S: sliding, F: full attention reading layer 0's cache); a last block of k < 6 layers keeps its
  /// first k - 1 entries and ends with the full layer.
  /// @param layers model layers @param sliding_window window of the sliding layers @param sliding_sinks sinks they still see
  /// @return the map
  /// @throws kvcompact::error naming `layers`, `sliding_window` or `sliding_sinks`
  static layer_map character_ai(int layers, int sliding_window, int sliding_sinks = 0) {
    detail::require(layers > 0 && layers <= max_layers, "layer_map::character_ai", "layers", "must be in [1, 256]");
    layer_map m;
    m.model_layers = layers;
    m.window = sliding_window;
    m.sinks = sliding_sinks;
    for (int start = 1; start < layers; start += 6) {
      const int block = layers - start < 6 ? layers - start : 6;
      for (int i = 0; i + 1 < block; ++i) {  // S own, S reuse (previous), S own, S reuse, S reuse
        const int l = start + i;
        m.sliding[l] = true;
        m.source[l] = static_cast<std::int16_t>(i == 0 || i == 2 ? l : (i == 1 ? l - 1 : start + 2));
      }
      m.source[start + block - 1] = 0;  // F: full attention over layer 0's cache
    }
    m.assign_storage();
    m.check_window("layer_map::character_ai", "sliding_window", "sliding_sinks");
    return m;
  }

  /// @brief Sliding-window layers without sharing: every layer keeps its own KV, layers `l` with
  /// `l % full_every == full_every - 1` attend fully, all others slide (`full_every = 1`: none slides).
  /// @param layers model layers @param sliding_window window @param full_every period of the full layers
  /// @param sliding_sinks first positions the sliding layers still see
  /// @return the map
  /// @throws kvcompact::error naming `layers`, `full_every`, `sliding_window` or `sliding_sinks`
  static layer_map interleaved(int layers, int sliding_window, int full_every, int sliding_sinks = 0) {
    detail::require(layers > 0 && layers <= max_layers, "layer_map::interleaved", "layers", "must be in [1, 256]");
    detail::require(full_every > 0, "layer_map::interleaved", "full_every", "must be positive");
    layer_map m;
    m.model_layers = layers;
    m.window = sliding_window;
    m.sinks = sliding_sinks;
    for (int l = 0; l < layers; ++l) {
      m.source[l] = static_cast<std::int16_t>(l);
      m.sliding[l] = l % full_every != full_every - 1;
    }
    m.assign_storage();
    m.check_window("layer_map::interleaved", "sliding_window", "sliding_sinks");
    return m;
  }

  /// @brief True when every model layer reading storage layer @p storage_layer slides: that layer
  /// needs only `window + sinks` slots (a ring buffer). @param storage_layer storage layer @return the flag
  KVCOMPACT_HOST_DEVICE bool window_only(int storage_layer) const {
    bool read = false;
    for (int l = 0; l < model_layers; ++l) {
      if (storage[l] != storage_layer) continue;
      if (!sliding[l]) return false;
      read = true;
    }
    return read;
  }

  /// @brief LCKV: the bottom `warmup_bottom` and top `warmup_top` layers keep their own KV, every other
  /// layer reads the highest non-warm-up layer (which reads itself).
  /// @param layers model layers
  /// @param warmup_bottom warm-up layers at the bottom
  /// @param warmup_top warm-up layers at the top
  /// @return the map
  static layer_map lckv(int layers, int warmup_bottom, int warmup_top) {
    detail::require(layers > 0 && layers <= max_layers, "layer_map::lckv", "layers", "must be in [1, 256]");
    detail::require(warmup_bottom >= 0 && warmup_top >= 0 && warmup_bottom + warmup_top < layers, "layer_map::lckv", "warmup",
                    "warm-up layers must leave at least one condensed layer");
    layer_map m;
    m.model_layers = layers;
    const int target = layers - warmup_top - 1;
    for (int l = 0; l < layers; ++l) {
      const bool warm = l < warmup_bottom || l > target;
      m.source[l] = static_cast<std::int16_t>(warm ? l : target);
    }
    m.assign_storage();
    return m;
  }

  /// @brief Cross-layer attention (CLA): groups of `group` consecutive layers share the KV of the
  /// group's first layer.
  /// @param layers model layers
  /// @param group layers per group
  /// @return the map
  static layer_map cross_layer(int layers, int group) {
    detail::require(layers > 0 && layers <= max_layers, "layer_map::cross_layer", "layers", "must be in [1, 256]");
    detail::require(group > 0, "layer_map::cross_layer", "group", "must be positive");
    layer_map m;
    m.model_layers = layers;
    for (int l = 0; l < layers; ++l) m.source[l] = static_cast<std::int16_t>(l - l % group);
    m.assign_storage();
    return m;
  }

  /// @brief True when model layer @p l computes and stores KV. @param l model layer @return the flag
  KVCOMPACT_HOST_DEVICE bool computes_kv(int l) const {
    for (int r = 0; r < model_layers; ++r)
      if (source[r] == l) return true;
    return false;
  }
  /// @brief True when model layer @p l reads a cache its own token has not reached yet. @param l model layer @return the flag
  KVCOMPACT_HOST_DEVICE bool reads_ahead(int l) const { return source[l] > l || exclude_current[l]; }
  /// @brief Whether a query of model layer @p l at position @p query_position sees the key at @p key_position.
  /// @param l model layer
  /// @param key_position logical position of the cached key
  /// @param query_position logical position of the query
  /// @return true when the key takes part in the attention
  KVCOMPACT_HOST_DEVICE bool visible(int l, index_t key_position, index_t query_position) const {
    if (reads_ahead(l) ? key_position >= query_position : key_position > query_position) return false;
    return !sliding[l] || key_position > query_position - window || key_position < sinks;
  }

 private:
  void check_window(const char* where, const char* window_argument, const char* sinks_argument) const {
    bool slides = false;
    for (int l = 0; l < model_layers; ++l) slides = slides || sliding[l];
    detail::require(!slides || window > 0, where, window_argument, [&] { return "must be at least 1 when a layer slides, got " + std::to_string(window); });
    detail::require(sinks >= 0, where, sinks_argument, [&] { return "must not be negative, got " + std::to_string(sinks); });
  }

  void assign_storage() {
    bool used[max_layers] = {};
    for (int l = 0; l < model_layers; ++l) {
      detail::require(source[l] >= 0 && source[l] < model_layers, "layer_map", "spec",
                      "layer " + std::to_string(l) + " reads layer " + std::to_string(source[l]) + ", outside the model");
      used[source[l]] = true;
    }
    int dense[max_layers] = {};
    cache_layers = 0;
    for (int l = 0; l < model_layers; ++l)
      if (used[l]) dense[l] = cache_layers++;
    for (int l = 0; l < model_layers; ++l) storage[l] = static_cast<std::int16_t>(dense[source[l]]);
  }
};

/// @brief A layer-condensed layout: storage layers are the cache layers of a kvcompact::layouts::layer_map,
/// stored through any inner layout (which must have `map.cache_layers` layers).
/// @tparam Inner the layout of the cache layers
template <class Inner>
struct layer_condensed {
  static_assert(detail::check_layout<Inner>(), "kvcompact: layer_condensed<Inner>: Inner is not a kvcompact::kv_layout");

  Inner inner;    ///< layout of the storage (cache) layers
  layer_map map;  ///< model layer to cache layer map

  /// @brief Number of sequences. @return inner's count
  KVCOMPACT_HOST_DEVICE index_t num_sequences() const { return inner.num_sequences(); }
  /// @brief Number of storage (cache) layers. @return inner's layer count
  KVCOMPACT_HOST_DEVICE index_t num_layers() const { return inner.num_layers(); }
  /// @brief Number of KV heads. @return inner's count
  KVCOMPACT_HOST_DEVICE index_t num_kv_heads() const { return inner.num_kv_heads(); }
  /// @brief Slots per (sequence, layer, head). @return inner's capacity
  KVCOMPACT_HOST_DEVICE index_t capacity() const { return inner.capacity(); }
  /// @brief Head dimension. @return inner's head dimension
  KVCOMPACT_HOST_DEVICE index_t head_dim() const { return inner.head_dim(); }
  /// @brief Stride of the head dimension. @return inner's stride
  KVCOMPACT_HOST_DEVICE index_t dim_stride() const { return inner.dim_stride(); }
  /// @brief Element offset of one slot of a storage layer.
  /// @param sequence sequence index
  /// @param layer storage layer
  /// @param kv_head KV head
  /// @param slot slot index
  /// @return the offset in elements
  KVCOMPACT_HOST_DEVICE index_t offset(index_t sequence, index_t layer, index_t kv_head, index_t slot) const {
    return inner.offset(sequence, layer, kv_head, slot);
  }
  /// @brief Slots per head of one storage layer (forwards the inner layout's layer_capacity(), capacity() without one).
  /// @param layer storage layer @return its capacity
  KVCOMPACT_HOST_DEVICE index_t layer_capacity(index_t layer) const { return detail::layer_capacity(inner, layer); }
  /// @brief Number of model layers. @return map.model_layers
  KVCOMPACT_HOST_DEVICE index_t num_model_layers() const { return map.model_layers; }
  /// @brief Storage layer read by a model layer. @param model_layer the model layer @return its storage layer
  KVCOMPACT_HOST_DEVICE index_t storage_layer(index_t model_layer) const { return map.storage[model_layer]; }
  /// @brief Visibility rule of a model layer. @param model_layer the model layer @param key_position key position
  /// @param query_position query position @return true when the key is attended
  KVCOMPACT_HOST_DEVICE bool visible(index_t model_layer, index_t key_position, index_t query_position) const {
    return map.visible(static_cast<int>(model_layer), key_position, query_position);
  }
  /// @brief Whether a slot maps into storage (forwards the inner layout's check; true without one).
  /// @param sequence sequence index @param slot slot index @return the inner layout's answer
  KVCOMPACT_HOST_DEVICE bool slot_in_range(index_t sequence, index_t slot) const { return detail::slot_in_range(inner, sequence, slot); }
  /// @brief Checks the inner layout's extents (without reading device-resident data) and the map.
  /// @param where name of the calling entry point
  void validate_extents(const char* where) const {
    detail::validate_layout_extents(inner, where);
    check_map(where);
  }
  /// @brief Checks the inner layout and that it has one layer per cache layer of the map.
  /// @param where name of the calling entry point
  void validate(const char* where) const {
    if constexpr (detail::layout_has_validate<Inner>) inner.validate(where);
    check_map(where);
  }

 private:
  void check_map(const char* where) const {
    if (inner.num_layers() != map.cache_layers)  // message built only on failure: validate() runs on every compress_prefill
      throw error(where, "layout.map",
                  "the inner layout has " + std::to_string(inner.num_layers()) + " layers but the map has " +
                      std::to_string(map.cache_layers) + " cache layers");
  }
};

}  // namespace layouts

/// @brief A layout whose model layers differ from its storage layers (kvcompact::layouts::layer_condensed
/// or a user type with the same members).
template <class L>
concept layer_mapped_layout = kv_layout<L> && requires(const L& l, index_t i) {
  { l.num_model_layers() } -> std::convertible_to<index_t>;
  { l.storage_layer(i) } -> std::convertible_to<index_t>;
  { l.visible(i, i, i) } -> std::convertible_to<bool>;
};

namespace detail {
/// Whether a query of @p layer at @p query_position attends the key at @p key_position: the layout's
/// visibility rule for layer-mapped layouts, plain causality otherwise.
template <class Layout>
KVCOMPACT_HOST_DEVICE bool attends(const Layout& layout, index_t layer, index_t key_position, index_t query_position) {
  if constexpr (layer_mapped_layout<Layout>) return layout.visible(layer, key_position, query_position);
  else return key_position <= query_position;
}
/// The storage layer a query of @p layer reads: the layout's map for layer-mapped layouts, @p layer otherwise.
template <class Layout>
KVCOMPACT_HOST_DEVICE index_t storage_layer_of(const Layout& layout, index_t layer) {
  if constexpr (layer_mapped_layout<Layout>) return layout.storage_layer(layer);
  else return layer;
}
}  // namespace detail

KVCOMPACT_NAMESPACE_END
