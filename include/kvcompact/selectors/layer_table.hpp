// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief budgets::layer_table: a budget schedule read from a per-layer table (PrefixKV and XKV
/// calibrations, ring-buffer window layers).
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/selectors/budgets.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

namespace budgets {

/// @brief One budget per storage layer, given as a table: a kept fraction of the layer's length
/// (@ref methods_prefixkv, @ref methods_xkv) or a fixed number of slots (@ref methods_mixattention's
/// window layers).
///
/// A fixed-size, trivially copyable table (like kvcompact::layouts::layer_map), so a policy holding
/// it is passed to CUDA kernels by value. Build it in code with fractions() or slots(), or load a
/// calibrated one with kvcompact::budgets::load_layer_budgets(). The sessions call validate() with
/// the cache's number of storage layers, so a table for another layer count is refused.
struct layer_table {
  static constexpr int max_layers = 256;  ///< most layers a table can describe

  /// @brief What the entries of a table count.
  enum class unit : std::uint8_t {
    fraction,  ///< the kept share of the layer's length, in (0, 1]
    slots,     ///< slots per head, whatever the length
  };

  int layers = 0;                 ///< number of storage layers the table describes
  unit kind = unit::fraction;     ///< what entries count
  index_t min_slots = 1;          ///< fraction tables: a layer keeps at least this many slots (its protected tokens)
  float entries[max_layers] = {}; ///< per-layer kept fraction or slot count

  /// @brief A table of kept fractions.
  /// @param keep kept fraction of every storage layer, each in (0, 1]
  /// @param min_slots a layer keeps at least this many slots (at least 1)
  /// @return the table
  /// @throws kvcompact::error naming `keep` (empty, more than 256 layers, an entry outside (0, 1]) or `min_slots`
  static layer_table fractions(std::span<const double> keep, index_t min_slots = 1) {
    layer_table t = sized(keep.size(), "layer_table::fractions", "keep");
    detail::require(min_slots >= 1, "layer_table::fractions", "min_slots", [&] { return "must be at least 1, got " + std::to_string(min_slots); });
    t.min_slots = min_slots;
    for (std::size_t l = 0; l < keep.size(); ++l) {
      detail::require(keep[l] > 0.0 && keep[l] <= 1.0, "layer_table::fractions", "keep",
                      [&] { return "entry " + std::to_string(l) + " is " + std::to_string(keep[l]) + ", outside (0, 1]"; });
      t.entries[l] = static_cast<float>(keep[l]);
    }
    return t;
  }

  /// @brief A table of slot counts.
  /// @param slots slots per head of every storage layer, each in [1, 2^24] (exact in the float entries)
  /// @return the table
  /// @throws kvcompact::error naming `slots` (empty, more than 256 layers, an entry outside [1, 2^24])
  static layer_table slots(std::span<const index_t> slots) {
    layer_table t = sized(slots.size(), "layer_table::slots", "slots");
    t.kind = unit::slots;
    for (std::size_t l = 0; l < slots.size(); ++l) {
      detail::require(slots[l] >= 1 && slots[l] <= (index_t{1} << 24), "layer_table::slots", "slots",
                      [&] { return "entry " + std::to_string(l) + " is " + std::to_string(slots[l]) + ", outside [1, 2^24]"; });
      t.entries[l] = static_cast<float>(slots[l]);
    }
    return t;
  }

  /// @brief Budget of a layer.
  /// @param layer storage layer @param length slots the head holds
  /// @return fraction tables: round(entry * length), at least min_slots; slot tables: the entry. A layer
  /// beyond the table (refused by validate()) keeps its whole length.
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t, index_t length) const {
    if (layer < 0 || layer >= layers) return length;
    if (kind == unit::slots) return static_cast<index_t>(entries[layer]);
    const index_t b = static_cast<index_t>(static_cast<double>(entries[layer]) * static_cast<double>(length) + 0.5);
    return b < min_slots ? min_slots : b;
  }

  /// @brief Mean entry over the layers (the average kept fraction of a fraction table).
  /// @return the mean, 0 for an empty table
  [[nodiscard]] double average() const {
    double sum = 0.0;
    for (int l = 0; l < layers; ++l) sum += entries[l];
    return layers > 0 ? sum / layers : 0.0;
  }

  /// @brief Checks that the table describes @p num_layers storage layers (called by the sessions).
  /// @param num_layers storage layers of the cache @param where name of the calling entry point
  /// @throws kvcompact::error naming `policy` when the layer counts differ
  void validate(index_t num_layers, const char* where) const {
    detail::require(layers == num_layers, where, "policy", [&] {
      return "the per-layer budget table has " + std::to_string(layers) + " layers but the cache has " + std::to_string(num_layers) +
             " storage layers (a table calibrated for another model?)";
    });
  }

 private:
  static layer_table sized(std::size_t count, const char* where, const char* argument) {
    detail::require(count > 0 && count <= static_cast<std::size_t>(max_layers), where, argument,
                    [&] { return "has " + std::to_string(count) + " entries, must be in [1, 256]"; });
    layer_table t;
    t.layers = static_cast<int>(count);
    return t;
  }
};

static_assert(budget_schedule<layer_table> && std::is_trivially_copyable_v<layer_table>);

}  // namespace budgets

KVCOMPACT_NAMESPACE_END
