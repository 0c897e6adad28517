// SPDX-License-Identifier: Apache-2.0
// Test support for key-channel pruning (ThinK): an owned kvcompact::pruned_keys store and plain
// double-precision references of the channel scores, the kept channel sets and the decode attention over
// the kept channels.
#pragma once

#include "support/reference.hpp"

#include <kvcompact/pruned_keys.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace kvtest {

/// @brief A pruned_keys store with owned host storage (the view points into this object's vectors).
template <class T>
struct owned_pruned {
  std::vector<T> thin, tail;
  std::vector<std::uint16_t> channels;
  std::vector<std::int32_t> thin_lengths;
  kvcompact::pruned_keys<T> view{};

  owned_pruned(const cache_shape& s, index_t kept, index_t thin_capacity, index_t tail_capacity) {
    view = {s.sequences, s.layers, s.kv_heads, s.head_dim, kept, thin_capacity, tail_capacity, nullptr, nullptr, nullptr, nullptr};
    thin.assign(static_cast<std::size_t>(view.thin_elements()), T{});
    tail.assign(static_cast<std::size_t>(view.tail_elements()), T{});
    channels.assign(static_cast<std::size_t>(view.head_count() * kept), 0);
    thin_lengths.assign(static_cast<std::size_t>(view.head_count()), 0);
    view.thin = thin.data(), view.tail = tail.data(), view.channels = channels.data(), view.thin_lengths = thin_lengths.data();
  }
};

/// @brief Double-precision channel scores of one head: mean over the group's window rows of q_c^2 times
/// the mean over the head's slots of k_c^2.
template <class T>
std::vector<double> reference_channel_scores(const random_cache<T>& c, const random_window& w, index_t s, index_t l, index_t h, index_t group) {
  const index_t dims = c.shape.head_dim, length = c.length(s, l, h);
  std::vector<double> scores(static_cast<std::size_t>(dims));
  for (index_t d = 0; d < dims; ++d) {
    double q = 0.0, k = 0.0;
    for (index_t g = h * group; g < (h + 1) * group; ++g)
      for (index_t r = 0; r < w.rows; ++r) q += static_cast<double>(w.query(s, l, g, r)[d]) * w.query(s, l, g, r)[d];
    for (index_t j = 0; j < length; ++j) k += c.key(s, l, h, j, d) * c.key(s, l, h, j, d);
    scores[static_cast<std::size_t>(d)] = (q / static_cast<double>(group * w.rows)) * (length > 0 ? k / static_cast<double>(length) : 0.0);
  }
  return scores;
}

/// @brief The @p kept channels of highest score (ties: lower index), ascending.
inline std::vector<index_t> reference_kept_channels(const std::vector<double>& scores, index_t kept) {
  std::vector<index_t> order(scores.size());
  std::iota(order.begin(), order.end(), index_t{0});
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return scores[static_cast<std::size_t>(a)] > scores[static_cast<std::size_t>(b)]; });
  order.resize(static_cast<std::size_t>(kept));
  std::sort(order.begin(), order.end());
  return order;
}

/// @brief Double-precision decode attention of one query head over a cache whose first @p thin slots of
/// the head keep only @p channels (the dropped channels count as zero) and whose other slots are full.
template <class T>
std::vector<double> reference_pruned_attention(const random_cache<T>& c, index_t s, index_t l, index_t h, const float* query, index_t position,
                                               const std::vector<index_t>& channels, index_t thin, double scale) {
  const index_t dims = c.shape.head_dim, length = c.length(s, l, h);
  std::vector<double> logits, out(static_cast<std::size_t>(dims), 0.0);
  std::vector<index_t> seen;
  for (index_t j = 0; j < length; ++j) {
    if (c.position(s, l, h, j) > position) continue;
    double dot = 0.0;
    if (j < thin)
      for (index_t d : channels) dot += static_cast<double>(query[d]) * c.key(s, l, h, j, d);
    else
      for (index_t d = 0; d < dims; ++d) dot += static_cast<double>(query[d]) * c.key(s, l, h, j, d);
    logits.push_back(dot * scale);
    seen.push_back(j);
  }
  if (seen.empty()) return out;
  const double top = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (double& x : logits) sum += (x = std::exp(x - top));
  for (std::size_t i = 0; i < seen.size(); ++i)
    for (index_t d = 0; d < dims; ++d) out[static_cast<std::size_t>(d)] += logits[i] / sum * c.value(s, l, h, seen[i], d);
  return out;
}

}  // namespace kvtest
