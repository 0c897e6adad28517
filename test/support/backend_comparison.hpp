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
///    kMergedTolerance relative (merged values are computed, then rounded to the storage type);
///  - per-slot decode states of matching heads within 1e-4 relative + 1e-6 absolute.
#pragma once

#include "support/custom_layout.hpp"
#include "support/device_cache.hpp"
#include "support/reference.hpp"

#include <kvcompact/cuda.cuh>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

namespace kvtest {

/// @brief Relative tolerance on merged K/V: two storage ulps of bf16 (8 significant bits).
inline constexpr double kMergedTolerance = 2.0 / 128.0;

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
snapshot_difference compare_snapshots(const snapshot& cpu, const snapshot& gpu, bool merges, std::vector<bool>& head_matches) {
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
        if (!close(x, y, kMergedTolerance, 1e-6)) fail("head " + std::to_string(head) + " element " + std::to_string(e) + ": merged value " +
                                                       std::to_string(x) + " vs " + std::to_string(y));
      }
    }
  }
  const index_t allowed = std::max<index_t>(1, out.heads / 16);
  if (out.differing_heads > allowed)
    fail(std::to_string(out.differing_heads) + " of " + std::to_string(out.heads) + " heads differ (ties allow " + std::to_string(allowed) + ")");
  return out;
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
    const snapshot_difference diff = compare_snapshots<T>(take_snapshot(cpu.view()), take_snapshot(result.view()), Policy::merges, matches);
    BOOST_TEST(diff.acceptable, diff.first);
    BOOST_TEST_MESSAGE(name << ": " << diff.differing_heads << " of " << diff.heads << " heads differ (ties within rounding)");

    const auto& layout = host.layout;
    const index_t capacity = layout.capacity();
    std::vector<typename gpu_session::state_type> states(static_cast<std::size_t>(host.lengths.size() * static_cast<std::size_t>(capacity)));
    std::vector<std::int32_t> budgets(host.lengths.size());
    KVCOMPACT_CUDA_CHECK(cudaMemcpy(states.data(), gpu.slot_states(), states.size() * sizeof(states[0]), cudaMemcpyDeviceToHost));
    KVCOMPACT_CUDA_CHECK(cudaMemcpy(budgets.data(), gpu.budgets(), budgets.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost));
    index_t bad_states = 0, bad_budgets = 0;
    for (index_t s = 0; s < layout.num_sequences(); ++s)
      for (index_t l = 0; l < layout.num_layers(); ++l)
        for (index_t h = 0; h < layout.num_kv_heads(); ++h) {
          const index_t head = (s * layout.num_layers() + l) * layout.num_kv_heads() + h;
          if (!matches[static_cast<std::size_t>(head)]) continue;
          bad_budgets += reference.budget(s, l, h) != budgets[static_cast<std::size_t>(head)];
          for (index_t j = 0; j < result.lengths[static_cast<std::size_t>(head)]; ++j)
            bad_states += !close(static_cast<double>(reference.slot_state(s, l, h, j)),
                                 static_cast<double>(states[static_cast<std::size_t>(head * capacity + j)]), 1e-4, 1e-6);
        }
    BOOST_TEST(bad_budgets == 0);
    BOOST_TEST(bad_states == 0);
  }
  return result;
}

}  // namespace kvtest
