// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief PrefixKV's global prefix search (host only): per-layer evicted fractions of one prompt from its
/// per-layer token importance, one cumulative-importance share for all layers.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/types.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

KVCOMPACT_NAMESPACE_BEGIN

namespace calibration {

/// @brief The whole number of tokens prefix_search() evicts in all layers for the target @p evicted_tokens
/// (`r L T`, in tokens): its floor, computed with a 1e-9 margin because `r L T` computed in double may
/// land just below a whole number it equals.
/// @param evicted_tokens r L T @return floor(r L T)
inline index_t whole_evicted_tokens(double evicted_tokens) { return static_cast<index_t>(std::floor(evicted_tokens + 1e-9)); }

/// @brief What prefix_search() found for one prompt.
struct prefix_search_result {
  std::vector<double> evicted;  ///< rho_l: evicted fraction of every layer (a whole number of tokens / T)
  double share = 0;             ///< p: the cumulative-importance share every layer keeps
  int iterations = 0;           ///< bisection steps taken
  bool converged = false;       ///< the total met the target within the tolerance before the step cap
};

/// @brief PrefixKV's search (@ref methods_prefixkv_search) over one prompt.
///
/// Each layer's tokens are ranked by importance; keeping the shortest prefix of that ranking whose
/// importance reaches the share `p` of the layer's total forgets `forget_l(p) = max(0, T - (1 + #{k :
/// C_l[k] < p}) - P)` tokens (C_l the normalised cumulative sums). `p` is bisected in [0, 1] until the
/// forgotten total is within @p tolerance tokens of `r * L * T` (and, when the target is at least one
/// token, above zero [ext]: at short prompts the whole target can lie within the tolerance), then the
/// per-layer counts are scaled to hit the target exactly, capped at `T - P` [ext], and truncated.
/// Truncation loses up to one token per layer, which at short prompts moves the mean evicted fraction
/// by up to `1 / T`; the tokens it lost go back one each to the layers with the largest remainders
/// [ext] (layers that forget nothing get none), so that the total is `floor(r * L * T)` whenever the
/// caps allow it: see meets_evicted_share().
/// @param importance importance[l][j] of token j in layer l (all layers the same length T; PrefixKV uses
/// the head-averaged attention column sums over every prompt row)
/// @param evicted_fraction r: the share of all layers' tokens to evict, in [0, 1)
/// @param protected_slots P: tokens every layer keeps whatever their importance (sinks + the last token)
/// @param tolerance bisection stops when the forgotten total is within this many tokens of the target
/// @param max_iterations bisection step cap [ext]: the reference code has none
/// @return the evicted fractions, the share and how the bisection ended
/// @throws kvcompact::error naming `importance` (empty, ragged, negative, NaN or a layer of zero total),
/// `evicted_fraction` or `protected_slots`
inline prefix_search_result prefix_search(const std::vector<std::vector<double>>& importance, double evicted_fraction, index_t protected_slots,
                                          double tolerance = 5.0, int max_iterations = 64) {
  const char* where = "prefix_search";
  detail::require(!importance.empty() && !importance[0].empty(), where, "importance", "needs at least one layer of at least one token");
  const auto layers = static_cast<index_t>(importance.size());
  const auto tokens = static_cast<index_t>(importance[0].size());
  detail::require(evicted_fraction >= 0.0 && evicted_fraction < 1.0, where, "evicted_fraction",
                  [&] { return "must be in [0, 1), got " + std::to_string(evicted_fraction); });
  detail::require(protected_slots >= 0 && protected_slots < tokens, where, "protected_slots",
                  [&] { return "must be in [0, " + std::to_string(tokens) + "), got " + std::to_string(protected_slots); });
  std::vector<std::vector<double>> cumulative(importance.size());
  for (index_t l = 0; l < layers; ++l) {
    const auto& a = importance[static_cast<std::size_t>(l)];
    detail::require(static_cast<index_t>(a.size()) == tokens, where, "importance",
                    [&] { return "layer " + std::to_string(l) + " has " + std::to_string(a.size()) + " tokens, layer 0 has " + std::to_string(tokens); });
    std::vector<double> sorted(a);
    for (double x : sorted)
      detail::require(x >= 0.0, where, "importance", [&] { return "layer " + std::to_string(l) + " has a negative or NaN entry"; });
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    double total = 0.0;
    for (double x : sorted) total += x;
    detail::require(total > 0.0, where, "importance", [&] { return "layer " + std::to_string(l) + " has zero total importance"; });
    double running = 0.0;
    for (double& x : sorted) x = (running += x) / total;
    cumulative[static_cast<std::size_t>(l)] = std::move(sorted);
  }
  const double target = evicted_fraction * static_cast<double>(layers * tokens);
  const index_t wanted = whole_evicted_tokens(target);
  auto forget = [&](index_t l, double p) {
    const auto& c = cumulative[static_cast<std::size_t>(l)];
    const auto below = static_cast<index_t>(std::lower_bound(c.begin(), c.end(), p) - c.begin());  // #{k : C[k] < p}, C ascending
    return std::max<index_t>(0, tokens - (1 + below) - protected_slots);
  };
  auto total_forgotten = [&](double p) {
    double sum = 0.0;
    for (index_t l = 0; l < layers; ++l) sum += static_cast<double>(forget(l, p));
    return sum;
  };
  prefix_search_result out;
  double lo = 0.0, hi = 1.0;
  for (out.iterations = 1; out.iterations <= max_iterations; ++out.iterations) {
    out.share = 0.5 * (lo + hi);
    const double forgotten = total_forgotten(out.share);
    if (std::abs(forgotten - target) < tolerance && (forgotten > 0.0 || wanted == 0)) {
      out.converged = true;
      break;
    }
    (forgotten < target ? hi : lo) = out.share;  // more share kept -> fewer tokens forgotten
  }
  out.iterations = std::min(out.iterations, max_iterations);
  const double forgotten = total_forgotten(out.share);
  out.evicted.assign(static_cast<std::size_t>(layers), 0.0);
  if (forgotten == 0.0) return out;
  const index_t cap = tokens - protected_slots;
  std::vector<index_t> count(static_cast<std::size_t>(layers));
  std::vector<double> remainder(static_cast<std::size_t>(layers));
  std::vector<index_t> order;  // layers that forget tokens, largest remainder first (ties: lower layer)
  index_t total = 0;
  for (index_t l = 0; l < layers; ++l) {
    const double scaled = std::min(static_cast<double>(forget(l, out.share)) * target / forgotten, static_cast<double>(cap));
    count[static_cast<std::size_t>(l)] = static_cast<index_t>(scaled);
    remainder[static_cast<std::size_t>(l)] = scaled - std::trunc(scaled);
    total += count[static_cast<std::size_t>(l)];
    if (scaled > 0.0) order.push_back(l);
  }
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return remainder[static_cast<std::size_t>(a)] > remainder[static_cast<std::size_t>(b)]; });
  for (bool room = true; total < wanted && room;) {  // more than one round only where caps cut counts
    room = false;
    for (index_t l : order)
      if (total < wanted && count[static_cast<std::size_t>(l)] < cap) {
        ++count[static_cast<std::size_t>(l)];
        ++total;
        room = true;
      }
  }
  for (index_t l = 0; l < layers; ++l) out.evicted[static_cast<std::size_t>(l)] = static_cast<double>(count[static_cast<std::size_t>(l)]) / static_cast<double>(tokens);
  return out;
}

/// @brief Whether per-layer evicted fractions meet the evicted share @p evicted_fraction as
/// prefix_search() rounds it: the tokens they evict in all layers, `sum_l rho_l T`, are at most
/// `r L T` and at least `floor(r L T)`. The mean over prompts of results that meet it meets it too,
/// so calibration checks its averaged tables with it.
/// @param evicted rho_l of every layer (at least one)
/// @param evicted_fraction r: the target share
/// @param tokens T: the prompt length the fractions were computed for
/// @return whether the evicted tokens are within that range (to 1e-6 tokens)
inline bool meets_evicted_share(const std::vector<double>& evicted, double evicted_fraction, index_t tokens) {
  double evicted_tokens = 0.0;
  for (double x : evicted) evicted_tokens += x * static_cast<double>(tokens);
  const double target = evicted_fraction * static_cast<double>(evicted.size()) * static_cast<double>(tokens);
  return !evicted.empty() && evicted_tokens <= target + 1e-6 && evicted_tokens >= static_cast<double>(whole_evicted_tokens(target)) - 1e-6;
}

}  // namespace calibration

KVCOMPACT_NAMESPACE_END
