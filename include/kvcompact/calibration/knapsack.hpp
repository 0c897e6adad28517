// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief XKV's allocation (host only): a sensitivity profile made monotone, and the exact per-layer
/// choice of kept fractions that minimises the summed loss under a total budget (multiple-choice knapsack).
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/types.hpp>

#include <limits>
#include <string>
#include <vector>

KVCOMPACT_NAMESPACE_BEGIN

namespace calibration {

/// @brief Makes each layer's loss non-increasing in the kept fraction: option k's loss becomes the
/// smallest loss of options 0..k (options ordered by increasing kept fraction). Keeping more can then
/// never look worse, which measurement noise could otherwise suggest (@ref methods_xkv_profile).
/// @param loss loss[l][k] of layer l at option k, modified in place
inline void make_non_increasing(std::vector<std::vector<double>>& loss) {
  for (auto& row : loss)
    for (std::size_t k = 1; k < row.size(); ++k)
      if (row[k] > row[k - 1]) row[k] = row[k - 1];
}

/// @brief One option per layer, as chosen by allocate_budget().
struct layer_allocation {
  std::vector<int> choice;  ///< option chosen for every layer
  double loss = 0;          ///< summed loss of the choice
  int units = 0;            ///< summed cost of the choice
};

/// @brief XKV's allocation (@ref methods_xkv_allocation): one option per layer, option k costing
/// `cost[k]` budget units and losing `loss[l][k]` in layer l, minimising the summed loss with a summed
/// cost of at most @p budget_units. Exact for that additive objective (dynamic programming over the
/// spent units, `O(L * budget_units * options)`). Ties go to the larger total cost, then, layer by
/// layer from the last, to the larger option.
/// @param loss loss[l][k] for every layer and option (all rows as long as @p cost)
/// @param cost cost[k] of option k, positive
/// @param budget_units the most units all layers may spend together
/// @return the choice, its loss and its cost
/// @throws kvcompact::error naming `loss` (empty, ragged, NaN), `cost` (non-positive) or `budget_units`
/// (below the cheapest choice of every layer)
inline layer_allocation allocate_budget(const std::vector<std::vector<double>>& loss, const std::vector<int>& cost, int budget_units) {
  const char* where = "allocate_budget";
  detail::require(!loss.empty() && !cost.empty(), where, "loss", "needs at least one layer and one option");
  int cheapest = std::numeric_limits<int>::max();
  for (int c : cost) {
    detail::require(c > 0, where, "cost", [&] { return "every cost must be positive, got " + std::to_string(c); });
    cheapest = c < cheapest ? c : cheapest;
  }
  for (std::size_t l = 0; l < loss.size(); ++l) {
    detail::require(loss[l].size() == cost.size(), where, "loss",
                    [&] { return "layer " + std::to_string(l) + " has " + std::to_string(loss[l].size()) + " options, cost has " + std::to_string(cost.size()); });
    for (double x : loss[l]) detail::require(x == x, where, "loss", [&] { return "layer " + std::to_string(l) + " has a NaN loss"; });
  }
  const auto layers = static_cast<int>(loss.size());
  detail::require(budget_units >= layers * cheapest, where, "budget_units", [&] {
    return std::to_string(budget_units) + " units cannot pay the cheapest option (" + std::to_string(cheapest) + " units) of all " + std::to_string(layers) +
           " layers";
  });
  constexpr double none = std::numeric_limits<double>::infinity();
  const auto width = static_cast<std::size_t>(budget_units) + 1;
  // best[l][b]: least loss of layers 0..l-1 spending exactly b units; pick[l][b]: layer l-1's option there
  std::vector<std::vector<double>> best(static_cast<std::size_t>(layers) + 1, std::vector<double>(width, none));
  std::vector<std::vector<int>> pick(static_cast<std::size_t>(layers) + 1, std::vector<int>(width, -1));
  best[0][0] = 0.0;
  for (int l = 0; l < layers; ++l)
    for (std::size_t b = 0; b < width; ++b) {
      if (best[l][b] == none) continue;
      for (std::size_t k = 0; k < cost.size(); ++k) {
        const std::size_t spent = b + static_cast<std::size_t>(cost[k]);
        if (spent >= width) continue;
        const double value = best[l][b] + loss[l][k];
        const auto next = static_cast<std::size_t>(l) + 1;
        if (value < best[next][spent] || (value == best[next][spent] && static_cast<int>(k) > pick[next][spent])) {
          best[next][spent] = value;
          pick[next][spent] = static_cast<int>(k);
        }
      }
    }
  layer_allocation out;
  std::size_t units = 0;
  for (std::size_t b = 0; b < width; ++b)
    if (best[layers][b] != none && (best[layers][units] == none || best[layers][b] <= best[layers][units])) units = b;
  out.loss = best[layers][units];
  out.units = static_cast<int>(units);
  out.choice.assign(static_cast<std::size_t>(layers), 0);
  for (int l = layers; l > 0; --l) {
    const int k = pick[l][units];
    out.choice[static_cast<std::size_t>(l) - 1] = k;
    units -= static_cast<std::size_t>(cost[static_cast<std::size_t>(k)]);
  }
  return out;
}

}  // namespace calibration

KVCOMPACT_NAMESPACE_END
