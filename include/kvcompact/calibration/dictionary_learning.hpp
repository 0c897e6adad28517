// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief CSR's offline step (host only): fitting a dictionary to sample vectors by alternating matching
/// pursuit with a one-step K-SVD update of every atom.
#pragma once

#include <kvcompact/codecs/matching_pursuit.hpp>
#include <kvcompact/error.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

KVCOMPACT_NAMESPACE_BEGIN

namespace calibration {

/// @brief What learn_dictionary() returns.
struct dictionary_fit {
  std::vector<float> atoms;    ///< [atoms][dim], unit norm
  std::vector<double> error;   ///< relative reconstruction error sum ||x - D r||^2 / sum ||x||^2 before each update, then after the last
};

/// @brief Fits @p atoms unit-norm atoms to @p samples (@ref methods_csr_dictionary). Starts from
/// distinct random samples, normalised; then @p iterations times: every sample is coded by
/// kvcompact::codecs::matching_pursuit with @p terms entries, and every atom in turn is replaced by the
/// normalised power-iteration step `E w` of the residual matrix `E` of the samples that use it (their
/// residual plus that atom's contribution, `w` their weights on it), after which those weights and
/// residuals are updated (an approximate K-SVD). An atom no sample uses takes the normalised sample
/// with the largest residual.
/// @param samples [count][dim] vectors @param dim vector length @param atoms N, at most 65536 and at most the number of samples
/// @param terms s, entries per code @param iterations updates @param seed random start
/// @return the atoms and the error trajectory
/// @throws kvcompact::error naming the argument out of range
inline dictionary_fit learn_dictionary(std::span<const float> samples, index_t dim, index_t atoms, index_t terms, int iterations, std::uint32_t seed) {
  detail::require(dim > 0 && samples.size() % static_cast<std::size_t>(dim) == 0, "learn_dictionary", "dim", "must be positive and divide the sample data");
  const auto count = static_cast<index_t>(samples.size() / static_cast<std::size_t>(dim));
  detail::require(atoms > 0 && atoms <= 65536 && atoms <= count, "learn_dictionary", "atoms",
                  [&] { return "must be in [1, min(65536, samples = " + std::to_string(count) + ")], got " + std::to_string(atoms); });
  detail::require(terms > 0, "learn_dictionary", "terms", "must be positive");
  detail::require(iterations >= 0, "learn_dictionary", "iterations", "must not be negative");
  const auto D = static_cast<std::size_t>(dim);
  auto sample = [&](index_t i) { return samples.data() + static_cast<std::size_t>(i) * D; };
  auto normalise_into = [&](const float* x, float* atom) {
    double norm = 0.0;
    for (std::size_t d = 0; d < D; ++d) norm += static_cast<double>(x[d]) * x[d];
    const double inverse = norm > 0.0 ? 1.0 / std::sqrt(norm) : 0.0;
    for (std::size_t d = 0; d < D; ++d) atom[d] = norm > 0.0 ? static_cast<float>(x[d] * inverse) : (d == 0 ? 1.0f : 0.0f);
  };
  dictionary_fit fit;
  fit.atoms.resize(static_cast<std::size_t>(atoms) * D);
  {
    std::vector<index_t> pick(static_cast<std::size_t>(count));
    for (index_t i = 0; i < count; ++i) pick[static_cast<std::size_t>(i)] = i;
    std::mt19937 rng(seed);
    for (index_t k = 0; k < atoms; ++k) {  // partial Fisher-Yates: distinct samples
      const auto j = static_cast<std::size_t>(k) + rng() % static_cast<std::size_t>(count - k);
      std::swap(pick[static_cast<std::size_t>(k)], pick[j]);
      normalise_into(sample(pick[static_cast<std::size_t>(k)]), fit.atoms.data() + static_cast<std::size_t>(k) * D);
    }
  }
  double total = 0.0;
  for (float x : samples) total += static_cast<double>(x) * x;
  const auto T = static_cast<std::size_t>(terms);
  std::vector<std::uint16_t> indices(static_cast<std::size_t>(count) * T);
  std::vector<float> weights(indices.size()), residual(samples.size());
  auto encode_all = [&] {
    double error = 0.0;
    for (index_t i = 0; i < count; ++i) {
      codecs::matching_pursuit(sample(i), fit.atoms.data(), atoms, dim, terms, residual.data() + static_cast<std::size_t>(i) * D,
                               indices.data() + static_cast<std::size_t>(i) * T, weights.data() + static_cast<std::size_t>(i) * T);
      for (std::size_t d = 0; d < D; ++d) error += static_cast<double>(residual[static_cast<std::size_t>(i) * D + d]) * residual[static_cast<std::size_t>(i) * D + d];
    }
    fit.error.push_back(total > 0.0 ? error / total : 0.0);
  };
  std::vector<std::vector<std::pair<index_t, std::size_t>>> users(static_cast<std::size_t>(atoms));  // (sample, code entry)
  std::vector<double> step(D);
  for (int it = 0; it < iterations; ++it) {
    encode_all();
    for (auto& u : users) u.clear();
    for (index_t i = 0; i < count; ++i)
      for (std::size_t t = 0; t < T; ++t) {
        const std::size_t e = static_cast<std::size_t>(i) * T + t;
        if (weights[e] != 0.0f) users[indices[e]].emplace_back(i, e);
      }
    for (index_t k = 0; k < atoms; ++k) {
      float* atom = fit.atoms.data() + static_cast<std::size_t>(k) * D;
      const auto& used_by = users[static_cast<std::size_t>(k)];
      if (used_by.empty()) {
        index_t worst = 0;
        double worst_error = -1.0;
        for (index_t i = 0; i < count; ++i) {
          double e = 0.0;
          for (std::size_t d = 0; d < D; ++d) e += static_cast<double>(residual[static_cast<std::size_t>(i) * D + d]) * residual[static_cast<std::size_t>(i) * D + d];
          if (e > worst_error) worst = i, worst_error = e;
        }
        normalise_into(residual.data() + static_cast<std::size_t>(worst) * D, atom);
        continue;
      }
      std::fill(step.begin(), step.end(), 0.0);
      for (const auto& [i, e] : used_by)  // E w, E's columns = residual + w * atom
        for (std::size_t d = 0; d < D; ++d)
          step[d] += static_cast<double>(weights[e]) * (residual[static_cast<std::size_t>(i) * D + d] + weights[e] * atom[d]);
      double norm = 0.0;
      for (double x : step) norm += x * x;
      if (!(norm > 0.0)) continue;
      const double inverse = 1.0 / std::sqrt(norm);
      std::vector<float> old(atom, atom + D);
      for (std::size_t d = 0; d < D; ++d) atom[d] = static_cast<float>(step[d] * inverse);
      for (const auto& [i, e] : used_by) {  // new weight = <E_i, atom>, residual = E_i - weight * atom
        float* r = residual.data() + static_cast<std::size_t>(i) * D;
        double dot = 0.0;
        for (std::size_t d = 0; d < D; ++d) dot += static_cast<double>(r[d] + weights[e] * old[d]) * atom[d];
        for (std::size_t d = 0; d < D; ++d) r[d] = static_cast<float>(r[d] + weights[e] * old[d] - dot * atom[d]);
        weights[e] = static_cast<float>(dot);
      }
    }
  }
  encode_all();
  return fit;
}

}  // namespace calibration

KVCOMPACT_NAMESPACE_END
