// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Runs the same policy over the same data through kvcompact::cpu::session (the reference
/// backend) and kvcompact::cuda::session, and compares what they leave in the cache.
///
/// Comparison rules (the two backends share every component's code; they differ only in float
/// summation order inside attention and softmax, and nvcc contracts multiply-adds):
///  - lengths, positions (in slot order) and per-head budgets must be equal, except for "ties within
///    rounding": at most one head in 16 (at least one) may differ, by at most one slot in length and
///    two positions in its keep-set; every other head must match exactly;
///  - K and V of matching heads bit-identical (compaction copies); for merging policies within
///    kMergedTolerance relative plus score_tolerance() x 2 absolute (merged values are weighted by
///    the scores, each weight within that relative tolerance, over values of magnitude below 2, then
///    rounded to the storage type);
///  - per-slot decode states of matching heads within score_tolerance() (2E relative, E the logit
///    error bound of logit_error_bound(): the CUDA backend rounds the window queries to the storage
///    type once, the CPU backend keeps them in fp32); CORM's positional states exactly, unless a
///    window decision of the layer lies within that tolerance of CORM's threshold.
///
/// check_scores_against_reference() compares the CUDA backend's prefill scores with the
/// double-precision reference of support/reference.hpp instead, for un-pooled top-k selection:
/// every kept slot's score within score_tolerance(), and keep-sets equal to the CPU backend's except
/// for slots whose reference score lies within twice that tolerance of the budget's threshold.
#pragma once

#include "support/custom_layout.hpp"
#include "support/device_cache.hpp"
#include "support/reference.hpp"

#include <kvcompact/cuda.cuh>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

namespace kvtest {

/// @brief Relative tolerance on merged K/V: two storage ulps of bf16 (8 significant bits).
inline constexpr double kMergedTolerance = 2.0 / 128.0;

/// @brief Unit roundoff of the operands the CUDA window kernels multiply: the storage type's, tf32's for fp32.
template <class T>
constexpr double operand_roundoff() {
  if constexpr (std::is_same_v<T, kvcompact::bfloat16_t>) return 1.0 / 256.0;  // 8 significant bits
  else return 1.0 / 2048.0;                                                  // fp16 and tf32: 11 significant bits
}

/// @brief E, a bound on |logit error| of the CUDA backend: rounding a query element to the operand type
/// changes it by at most u|q|, so a scaled logit moves by at most u * scale * sum_d |q_d||k_d| (keys of
/// the tests are exact in every operand type). A probability exp(x_j) / sum_k exp(x_k) then has a
/// relative error of at most 2E, and so has every positive sum, mean or maximum of probabilities.
template <class T, class Layout>
double logit_error_bound(const layout_cache<T, Layout>& c, const random_window& w, index_t query_heads, double scale) {
  const auto& layout = c.layout;
  const index_t group = query_heads / layout.num_kv_heads();
  double worst = 0.0;
  for (index_t s = 0; s < layout.num_sequences(); ++s)
    for (index_t l = 0; l < layout.num_layers(); ++l)
      for (index_t g = 0; g < query_heads; ++g)
        for (index_t r = 0; r < w.rows; ++r)
          for (index_t j = 0; j < c.lengths[static_cast<std::size_t>(c.head_index(s, l, g / group))]; ++j) {
            double sum = 0.0;
            for (index_t d = 0; d < layout.head_dim(); ++d)
              sum += std::abs(static_cast<double>(w.query(s, l, g, r)[d]) * to_double(c.keys[static_cast<std::size_t>(c.element(s, l, g / group, j, d))]));
            worst = std::max(worst, sum);
          }
  return operand_roundoff<T>() * scale * worst;
}

/// @brief Relative tolerance of a prefill score (and of a state derived from it): 2E, plus 1e-4 for
/// fp32 summation over the keys and the exp2 approximation.
inline double score_tolerance(double logit_bound) { return 2.0 * logit_bound + 1e-4; }

/// @brief A kvtest::random_cache (BHSD) holding the same logical content as @p c, for the references.
template <class T, class Layout>
random_cache<T> reference_cache(const layout_cache<T, Layout>& c) {
  const auto& L = c.layout;
  random_cache<T> out({L.num_sequences(), L.num_layers(), L.num_kv_heads(), L.capacity(), L.head_dim()});
  out.lengths = c.lengths;
  out.positions = c.positions;
  for (index_t s = 0; s < L.num_sequences(); ++s)
    for (index_t l = 0; l < L.num_layers(); ++l)
      for (index_t h = 0; h < L.num_kv_heads(); ++h)
        for (index_t j = 0; j < out.length(s, l, h); ++j)
          for (index_t d = 0; d < L.head_dim(); ++d) {
            out.keys[static_cast<std::size_t>(out.element(s, l, h, j, d))] = c.keys[static_cast<std::size_t>(c.element(s, l, h, j, d))];
            out.values[static_cast<std::size_t>(out.element(s, l, h, j, d))] = c.values[static_cast<std::size_t>(c.element(s, l, h, j, d))];
          }
  return out;
}

/// @brief The value a stored element's raw bits stand for.
template <class T>
double bits_value(std::uint32_t bits) {
  if constexpr (std::is_same_v<T, float>) return static_cast<double>(std::bit_cast<float>(bits));
  else return to_double(T{static_cast<std::uint16_t>(bits)});
}

/// @brief Counts of what differed between two snapshots.
struct snapshot_difference {
  index_t heads = 0;           ///< heads compared
  index_t differing_heads = 0; ///< heads whose keep-sets differ
  bool acceptable = true;      ///< every difference is a tie within rounding and data of matching heads agree
  std::string first;           ///< description of the first unacceptable difference
};

/// @brief Compares the snapshot of the CPU result with the GPU result (rules in the file comment).
/// @param merges whether K/V may have been rewritten by a merger (tolerance instead of bit equality)
template <class T>
snapshot_difference compare_snapshots(const snapshot& cpu, const snapshot& gpu, bool merges, std::vector<bool>& head_matches,
                                      double merged_absolute = 1e-6) {
  snapshot_difference out;
  out.heads = static_cast<index_t>(cpu.lengths.size());
  head_matches.assign(cpu.lengths.size(), true);
  auto fail = [&](const std::string& what) {
    if (out.acceptable) out.first = what;
    out.acceptable = false;
  };
  for (std::size_t head = 0; head < cpu.lengths.size(); ++head) {
    if (cpu.positions[head] != gpu.positions[head]) {
      head_matches[head] = false;
      ++out.differing_heads;
      const std::set<std::int32_t> a(cpu.positions[head].begin(), cpu.positions[head].end());
      const std::set<std::int32_t> b(gpu.positions[head].begin(), gpu.positions[head].end());
      std::vector<std::int32_t> symmetric;
      std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(symmetric));
      if (std::abs(cpu.lengths[head] - gpu.lengths[head]) > 1 || symmetric.size() > 2)
        fail("head " + std::to_string(head) + ": lengths " + std::to_string(cpu.lengths[head]) + " vs " + std::to_string(gpu.lengths[head]) +
             ", " + std::to_string(symmetric.size()) + " positions differ");
      continue;
    }
    for (std::size_t e = 0; e < cpu.key_bits[head].size(); ++e) {
      const bool same = cpu.key_bits[head][e] == gpu.key_bits[head][e] && cpu.value_bits[head][e] == gpu.value_bits[head][e];
      if (same) continue;
      if (!merges) {
        fail("head " + std::to_string(head) + " element " + std::to_string(e) + ": K/V not bit-identical");
        break;
      }
      for (const auto* bits : {&cpu.key_bits, &cpu.value_bits}) {
        const auto* other = bits == &cpu.key_bits ? &gpu.key_bits : &gpu.value_bits;
        const double x = bits_value<T>((*bits)[head][e]), y = bits_value<T>((*other)[head][e]);
        if (!close(x, y, kMergedTolerance, merged_absolute)) fail("head " + std::to_string(head) + " element " + std::to_string(e) + ": merged value " +
                                                       std::to_string(x) + " vs " + std::to_string(y));
      }
    }
  }
  const index_t allowed = std::max<index_t>(1, out.heads / 16);
  if (out.differing_heads > allowed)
    fail(std::to_string(out.differing_heads) + " of " + std::to_string(out.heads) + " heads differ (ties allow " + std::to_string(allowed) + ")");
  return out;
}

/// @brief The default logit scale of a cache, 1 / sqrt(head_dim).
template <class T, class Layout>
double shape_scale(const layout_cache<T, Layout>& c) {
  return 1.0 / std::sqrt(static_cast<double>(static_cast<float>(c.layout.head_dim())));
}

/// @brief Runs compress_prefill through both backends and checks the results agree.
/// @param host the prefilled cache (not modified) @param window observation window (host copy)
/// @return the cache the GPU backend left (for further property checks)
template <class Policy, class T, class Layout>
layout_cache<T, Layout> check_prefill_matches(const std::string& name, const Policy& policy, const layout_cache<T, Layout>& host,
                                              const random_window& window, index_t query_heads) {
  layout_cache<T, Layout> result = host;
  BOOST_TEST_CONTEXT(name) {
    const kvcompact::attention_shape shape{query_heads};
    layout_cache<T, Layout> cpu = host;
    session_storage<Policy, T, Layout> cpu_storage(cpu.layout, shape);
    kvcompact::cpu::session<Policy, T, Layout> reference(policy, cpu.view(), shape, cpu_storage.state_span(), cpu_storage.workspace_span());
    reference.compress_prefill(window.view());

    device_cache<T, Layout> device(host);
    const device_window device_rows(window);
    using gpu_session = kvcompact::cuda::session<Policy, T, Layout>;
    device_session_storage<gpu_session> storage(device.layout.layout, shape, window.rows);
    gpu_session gpu(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, window.rows);
    gpu.compress_prefill(device_rows.view());
    gpu.check("compress_prefill");

    result = device.download(host);
    std::vector<bool> matches;
    const double tolerance = score_tolerance(logit_error_bound(host, window, query_heads, shape_scale(host)));
    const snapshot_difference diff =
        compare_snapshots<T>(take_snapshot(cpu.view()), take_snapshot(result.view()), Policy::merges, matches, 2.0 * tolerance);
    BOOST_TEST(diff.acceptable, diff.first);
    BOOST_TEST_MESSAGE(name << ": " << diff.differing_heads << " of " << diff.heads << " heads differ (ties within rounding)");

    const auto& layout = host.layout;
    const index_t capacity = layout.capacity();
    std::vector<typename gpu_session::state_type> states(static_cast<std::size_t>(host.lengths.size() * static_cast<std::size_t>(capacity)));
    std::vector<std::int32_t> budgets(host.lengths.size());
    KVCOMPACT_CUDA_CHECK(cudaMemcpy(states.data(), gpu.slot_states(), states.size() * sizeof(states[0]), cudaMemcpyDeviceToHost));
    KVCOMPACT_CUDA_CHECK(cudaMemcpy(budgets.data(), gpu.budgets(), budgets.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost));
    index_t bad_states = 0, bad_budgets = 0;
    const auto exact = reference_cache(host);
    for (index_t s = 0; s < layout.num_sequences(); ++s)
      for (index_t l = 0; l < layout.num_layers(); ++l) {
        bool near_threshold = false;  // CORM: a window decision of the layer within the tolerance of alpha
        if constexpr (std::is_same_v<typename Policy::scorer_type, kvcompact::scorers::recent_query>) {
          double margin = std::numeric_limits<double>::infinity();
          attention_score_spec spec;
          spec.term = term_kind::corm_importance;
          spec.alpha = policy.scorer.alpha;
          spec.position_reference = policy.scorer.reference == kvcompact::scorers::recent_query::threshold_reference::position;
          (void)prefill_attention_scores(exact, window, s, l, query_heads, shape_scale(host), spec, &margin);
          near_threshold = margin <= tolerance;
        }
        for (index_t h = 0; h < layout.num_kv_heads(); ++h) {
          const index_t head = (s * layout.num_layers() + l) * layout.num_kv_heads() + h;
          if (!matches[static_cast<std::size_t>(head)]) continue;
          bad_budgets += reference.budget(s, l, h) != budgets[static_cast<std::size_t>(head)];
          if (near_threshold) continue;
          for (index_t j = 0; j < result.lengths[static_cast<std::size_t>(head)]; ++j)
            bad_states += !close(static_cast<double>(reference.slot_state(s, l, h, j)),
                                 static_cast<double>(states[static_cast<std::size_t>(head * capacity + j)]), tolerance, 1e-6);
        }
      }
    BOOST_TEST(bad_budgets == 0);
    BOOST_TEST(bad_states == 0);
  }
  return result;
}

/// @brief The double-precision reference's description of an attention scorer's prefill score.
template <class Scorer>
attention_score_spec reference_spec(const Scorer& scorer) {
  const auto as_reduce = [](kvcompact::reduction r) { return r == kvcompact::reduction::sum ? reduce::sum : r == kvcompact::reduction::mean ? reduce::mean : reduce::max; };
  attention_score_spec spec;
  spec.rows = as_reduce(scorer.rows);
  spec.group = as_reduce(scorer.group);
  spec.all_heads = Scorer::shares_across_kv_heads;
  return spec;
}

/// @brief Runs compress_prefill of @p policy (an attention scorer whose state_from_prefill keeps the
/// score, with un-pooled top-k selection and nothing protected) through both backends and checks the
/// CUDA backend against the double-precision reference (rules in the file comment).
template <class Policy, class T, class Layout>
void check_scores_against_reference(const std::string& name, const Policy& policy, const layout_cache<T, Layout>& host, const random_window& window,
                                    index_t query_heads, index_t budget) {
  BOOST_TEST_CONTEXT(name) {
    const kvcompact::attention_shape shape{query_heads};
    layout_cache<T, Layout> cpu = host;
    session_storage<Policy, T, Layout> cpu_storage(cpu.layout, shape);
    kvcompact::cpu::session<Policy, T, Layout> reference(policy, cpu.view(), shape, cpu_storage.state_span(), cpu_storage.workspace_span());
    reference.compress_prefill(window.view());

    device_cache<T, Layout> device(host);
    const device_window device_rows(window);
    using gpu_session = kvcompact::cuda::session<Policy, T, Layout>;
    device_session_storage<gpu_session> storage(device.layout.layout, shape, window.rows);
    gpu_session gpu(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, window.rows);
    gpu.compress_prefill(device_rows.view());
    gpu.check("compress_prefill");
    const layout_cache<T, Layout> result = device.download(host);
    std::vector<float> states(result.positions.size());
    KVCOMPACT_CUDA_CHECK(cudaMemcpy(states.data(), gpu.slot_states(), states.size() * sizeof(float), cudaMemcpyDeviceToHost));

    const double scale = shape_scale(host), tolerance = score_tolerance(logit_error_bound(host, window, query_heads, scale));
    const auto exact = reference_cache(host);
    const auto& layout = host.layout;
    const index_t capacity = layout.capacity();
    index_t bad_scores = 0, bad_swaps = 0, wrong_counts = 0, swaps = 0;
    double worst = 0.0;
    for (index_t s = 0; s < layout.num_sequences(); ++s)
      for (index_t l = 0; l < layout.num_layers(); ++l) {
        const auto scores = prefill_attention_scores(exact, window, s, l, query_heads, scale, reference_spec(policy.scorer));
        for (index_t h = 0; h < layout.num_kv_heads(); ++h) {
          const index_t head = host.head_index(s, l, h), n = host.lengths[static_cast<std::size_t>(head)];
          std::map<std::int32_t, double> by_position;
          std::vector<double> ranked;
          for (index_t j = 0; j < n; ++j) {
            const double score = scores[static_cast<std::size_t>(h)][static_cast<std::size_t>(j)];
            by_position[host.positions[static_cast<std::size_t>(head * capacity + j)]] = score;
            ranked.push_back(score);
          }
          std::sort(ranked.rbegin(), ranked.rend());
          const index_t kept = std::min(budget, n);
          wrong_counts += result.lengths[static_cast<std::size_t>(head)] != kept;
          const double threshold = kept > 0 && kept < n ? ranked[static_cast<std::size_t>(kept - 1)] : 0.0;
          std::set<std::int32_t> on_gpu, on_cpu;
          for (index_t j = 0; j < result.lengths[static_cast<std::size_t>(head)]; ++j) {
            const std::int32_t position = result.positions[static_cast<std::size_t>(head * capacity + j)];
            on_gpu.insert(position);
            const double want = by_position.at(position), got = states[static_cast<std::size_t>(head * capacity + j)];
            worst = std::max(worst, std::abs(got - want) / std::max(std::abs(want), 1e-30));
            bad_scores += !close(want, got, tolerance, 1e-7);
          }
          for (index_t j = 0; j < cpu.lengths[static_cast<std::size_t>(head)]; ++j) on_cpu.insert(cpu.positions[static_cast<std::size_t>(head * capacity + j)]);
          std::vector<std::int32_t> differing;
          std::set_symmetric_difference(on_cpu.begin(), on_cpu.end(), on_gpu.begin(), on_gpu.end(), std::back_inserter(differing));
          swaps += static_cast<index_t>(differing.size());
          for (const std::int32_t position : differing) bad_swaps += !close(by_position.at(position), threshold, 2.0 * tolerance, 1e-7);
        }
      }
    BOOST_TEST_MESSAGE(name << ": score tolerance " << tolerance << ", worst relative score error " << worst << ", " << swaps
                            << " slots differ from the CPU keep-sets (near-ties)");
    BOOST_TEST(wrong_counts == 0);
    BOOST_TEST(bad_scores == 0, bad_scores << " kept slots' scores outside the tolerance " << tolerance);
    BOOST_TEST(bad_swaps == 0, bad_swaps << " keep-set differences are not near-ties of the threshold");
  }
}

}  // namespace kvtest
