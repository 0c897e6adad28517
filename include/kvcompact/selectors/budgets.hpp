// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Budget schedules: how many slots each layer keeps (uniform, fraction, evicted share, PyramidKV, WindowKV groups).
#pragma once

#include <kvcompact/types.hpp>

#include <concepts>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief A per-layer budget schedule: `budget(layer, num_layers, length)` gives the slots a head of
/// `layer` keeps (protected slots included) when it holds `length` slots; host and device callable.
///
/// Example: budgets falling linearly with depth (compiled and tested by test/unit/user_components.cpp):
/// @snippet user_components.cpp budget schedule
template <class B>
concept budget_schedule = requires(const B& b, index_t i) {
  { b.budget(i, i, i) } -> std::convertible_to<index_t>;
};

namespace budgets {

/// @brief The same number of slots in every layer.
struct fixed {
  index_t slots;  ///< slots kept per head
  /// @brief Budget of a layer. @return slots
  KVCOMPACT_HOST_DEVICE index_t budget(index_t, index_t, index_t) const { return slots; }
};

/// @brief A fraction of the current length, rounded to nearest (at least 1).
struct fraction {
  double ratio;  ///< kept fraction in (0, 1]
  /// @brief Budget of a layer. @param length slots held @return round(ratio * length), at least 1
  KVCOMPACT_HOST_DEVICE index_t budget(index_t, index_t, index_t length) const {
    const index_t b = static_cast<index_t>(ratio * static_cast<double>(length) + 0.5);
    return b < 1 ? 1 : b;
  }
};

/// @brief The length minus a share of it rounded down: `length - floor(evicted * length)`, at least
/// `min_slots` (Elastic Cache's and PrefixKV's rounding, @ref methods_elastic_selection).
struct evicted_share {
  double evicted;         ///< r: evicted fraction in [0, 1)
  index_t min_slots = 1;  ///< a head keeps at least this many slots (its protected tokens)
  /// @brief Budget of a layer. @param length slots held @return length - floor(evicted * length), at least min_slots
  KVCOMPACT_HOST_DEVICE index_t budget(index_t, index_t, index_t length) const {
    const index_t b = length - static_cast<index_t>(evicted * static_cast<double>(length));
    return b < min_slots ? min_slots : b;
  }
};

/// @brief PyramidKV (@ref methods_pyramidkv): more slots in lower layers, average `average` (window included).
struct pyramid {
  index_t average;  ///< C: average budget per layer, window included
  index_t window;   ///< w: observation window kept on top of the pyramid share
  index_t beta = 20;  ///< steepness: the top layer keeps about (C - w) / beta

  /// @brief Budget of a layer (window included).
  /// @param layer layer index @param num_layers number of layers @param length prompt length T
  /// @return keep_l + w, or @p length when there is nothing to compress
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t num_layers, index_t length) const {
    if (length < average) return length;
    const index_t base = average - window;
    index_t min_n = base / beta;
    index_t max_n = 2 * base - min_n;
    if (max_n >= length - window) {
      max_n = length - window;
      min_n = 2 * base - max_n;
    }
    if (length < 2 * base || num_layers < 2) return base + window;  // uniform middle regime
    const index_t step = (max_n - min_n) / (num_layers - 1);
    return max_n - layer * step + window;
  }
};

/// @brief WindowKV's group pyramid (@ref methods_windowkv_budget): layers in groups of `group`, review-token
/// budget per group falling arithmetically, average `average`; the suffix is NOT included.
struct group_pyramid {
  index_t average;     ///< C: average review-token budget per layer
  index_t group;       ///< gamma: layers per group
  index_t beta = 14;   ///< steepness

  /// @brief Review-token budget of a layer.
  /// @param layer layer index @param num_layers number of layers
  /// @return b[layer / group]
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t num_layers, index_t) const {
    const index_t groups = (num_layers + group - 1) / group;
    const index_t last = average * group / beta;
    if (groups < 2) return average;
    const index_t first = 2 * average - last;
    const index_t step = (first - last) / (groups - 1);
    const index_t g = layer / group;
    return g == groups - 1 ? last : first - g * step;
  }
};

}  // namespace budgets

KVCOMPACT_NAMESPACE_END
