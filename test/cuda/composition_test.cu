// SPDX-License-Identifier: Apache-2.0
// GPU test of the selection contract with components written here, outside namespace kvcompact: a
// ranked selector whose keys pool neighbouring candidates (so decode eviction needs the position
// order, sorted on the device), a cooperative selector (group code: one worker per block of
// positions, then a partial selection) that also evicts during decode, and a merger that folds
// evicted keys and values into the previous kept slot (a reverse scan, then one worker per kept slot
// and dimension). Composed with each other and with built-in components, they run through
// kvcompact::cuda::session on a thread block per head (the cooperative selector records the size of
// the group it ran on: 256 threads on the device, one worker on the CPU) and must leave the cache
// exactly as kvcompact::cpu::session does (support/backend_comparison.hpp), at prefill and after a
// decode loop with eviction. Property checks on the device's result: budgets respected, protected
// (recent) positions kept, no position lost or duplicated, kept K/V bit-identical when nothing merges.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/backend_comparison.hpp"

#include <atomic>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

/// Ranked: keeps the `recent` newest slots plus the best candidates by the mean score of the candidate
/// and its two neighbours in position order (`budget` slots in all); decode evicts the worst
/// candidates until the incoming token fits.
struct smoothed_top {
  using component_kind = kc::ranked_selector_tag;
  static constexpr kc::selection_scope scope = kc::selection_scope::head;
  index_t slots = 40;
  index_t recent = 6;

  KVCOMPACT_HOST_DEVICE index_t budget(index_t, index_t, index_t) const { return slots; }
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE kc::slot_verdict verdict(const Ctx& ctx, int h, index_t slot) const {
    const bool keep = ctx.length(h) <= slots || ctx.position(h, slot) > ctx.step() - recent;
    return keep ? kc::slot_verdict::keep : kc::slot_verdict::candidate;
  }
  template <class Candidates>
  KVCOMPACT_HOST_DEVICE float rank_key(const Candidates& c, index_t i) const {
    float sum = c.score(i);
    if (i > 0) sum += c.score(i - 1);
    if (i + 1 < c.count()) sum += c.score(i + 1);
    return sum / 3.0f;
  }
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t keep_count(const Ctx& ctx, int h, index_t protected_count) const {
    return ctx.length(h) <= slots || slots <= protected_count ? 0 : slots - protected_count;
  }
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE kc::slot_verdict decode_verdict(const Ctx& ctx, int h, index_t slot) const {
    return ctx.position(h, slot) > ctx.step() - recent ? kc::slot_verdict::keep : kc::slot_verdict::candidate;
  }
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t decode_evictions(const Ctx& ctx, int h) const {
    return ctx.length(h) + 1 > ctx.budget(h) ? ctx.length(h) + 1 - ctx.budget(h) : 0;
  }
};

/// Records a worker count from every block that runs a head (all write the same value): an atomic
/// store, so that the emulator's blocks (OS threads) do not race on the word.
KVCOMPACT_HOST_DEVICE inline void record_group_size(int* where, int size) {
#if defined(__CUDA_ARCH__)
  atomicExch(where, size);
#else
  std::atomic_ref<int>(*where).store(size, std::memory_order_relaxed);
#endif
}

/// Cooperative: keeps the `recent` newest slots, the best slot (score, then lower position) of every
/// block of `block` consecutive positions, and the `extra` best of the others. Decode: a head at its
/// budget evicts its lowest-scoring slot outside the recent window. Records the group size it ran on.
struct block_champions {
  using component_kind = kc::cooperative_selector_tag;
  static constexpr kc::selection_scope scope = kc::selection_scope::head;
  index_t block = 5;
  index_t extra = 8;
  index_t recent = 6;
  index_t cap = 48;
  int* group_size = nullptr;  // where select() records the number of workers

  KVCOMPACT_HOST_DEVICE index_t budget(index_t, index_t, index_t) const { return cap; }

  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select(Group& group, Ctx& ctx, int h) const {
    const index_t n = ctx.length(h);
    const std::int32_t* order = ctx.order(h);
    auto key = [&](index_t i) { return kc::detail::rank_key(ctx.score(h, order[i]), ctx.position(h, order[i])); };
    group.once([&] { record_group_size(group_size, group.size()); });
    group.for_each((n + block - 1) / block, [&](index_t b) {
      index_t best = b * block;
      for (index_t i = best + 1; i < n && i < (b + 1) * block; ++i)
        if (key(i) > key(best)) best = i;
      ctx.keep(h, order[best], true);
    });
    group.for_each(n, [&](index_t i) {
      if (ctx.position(h, order[i]) > ctx.step() - recent) ctx.keep(h, order[i], true);
    });
    auto other_key = [&](index_t i) { return ctx.kept(h, order[i]) ? std::uint64_t{0} : key(i); };
    const std::uint64_t cut = group.kth_largest(n, extra, other_key);
    group.for_each(n, [&](index_t i) {
      if (other_key(i) >= cut) ctx.keep(h, order[i], true);
    });
  }

  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select_decode(Group& group, Ctx& ctx, int h) const {
    if (ctx.length(h) + 1 <= ctx.budget(h)) return;
    auto victim_key = [&](index_t j) {
      return ctx.position(h, j) > ctx.step() - recent ? std::uint64_t{0} : kc::detail::eviction_key(ctx.score(h, j), ctx.position(h, j));
    };
    const std::uint64_t cut = group.kth_largest(ctx.length(h), 1, victim_key);
    group.for_each(ctx.length(h), [&](index_t j) {
      if (victim_key(j) >= cut) ctx.keep(h, j, false);
    });
  }
};

/// Merger: every evicted slot's key and value are added, times `weight`, to the previous kept slot in
/// position order (evicted slots before the first kept one are dropped).
struct fold_backward {
  using component_kind = kc::merger_tag;
  static constexpr bool merges = true;
  float weight = 0.25f;

  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Group& group, Ctx& ctx, int h) const {
    const index_t n = ctx.length(h), dims = ctx.head_dim();
    const std::int32_t* order = ctx.order(h);
    std::int32_t* next_kept = ctx.index_scratch(h, 0);  // [order rank]: rank of the first kept slot after it, n if none
    group.exclusive_scan(
        n, [&](index_t r) { return ctx.kept(h, order[n - 1 - r]) ? n - 1 - r : n; }, n, [](index_t a, index_t b) { return a < b ? a : b; },
        [&](index_t r, index_t after, index_t) { next_kept[n - 1 - r] = static_cast<std::int32_t>(after); });
    group.for_each(n * dims, [&](index_t e) {
      const index_t i = e / dims, d = e % dims;
      if (!ctx.kept(h, order[i])) return;
      float k = ctx.key(h, order[i], d), v = ctx.value(h, order[i], d);
      for (index_t m = i + 1; m < next_kept[i]; ++m) {
        k += weight * ctx.key(h, order[m], d);
        v += weight * ctx.value(h, order[m], d);
      }
      ctx.set_key(h, order[i], d, k);
      ctx.set_value(h, order[i], d, v);
    });
  }
};

static_assert(kc::ranked_selector<smoothed_top> && kc::cooperative_selector<block_champions> && kc::entry_merger<fold_backward>);

namespace {

constexpr index_t S = 2, L = 2, H = 2, G = 2, CAP = 96, D = 32, ROWS = 6, PROMPT = 80;
using T = kc::bfloat16_t;

// A prompt of PROMPT tokens per head in shuffled slots (the position order must be computed), values
// exact in bf16.
kvtest::layout_cache<T, kc::layouts::strided> prompt_cache(std::uint32_t seed) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = PROMPT;
  fill.shuffle_slots = true;
  auto c = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
  kvtest::round_to_exact_values(c);
  return kvtest::copy_into(kvtest::convert_cache<T>(c), kc::layouts::bhsd(S, L, H, CAP, D));
}

kvtest::random_window prompt_window(std::uint32_t seed) {
  return kvtest::make_random_window(S, L, H * G, ROWS, D, {PROMPT - 1, PROMPT - 1}, 1.0, seed);
}

// Per head of a cache: position -> slot.
std::vector<std::map<std::int32_t, index_t>> slots_by_position(const kvtest::layout_cache<T, kc::layouts::strided>& c) {
  std::vector<std::map<std::int32_t, index_t>> out;
  for (std::size_t head = 0; head < c.lengths.size(); ++head) {
    out.emplace_back();
    for (index_t j = 0; j < c.lengths[head]; ++j) out.back()[c.positions[head * CAP + static_cast<std::size_t>(j)]] = j;
  }
  return out;
}

// Properties of a compressed cache against its prompt: every kept position is a prompt position held
// once, the `recent` newest are kept, at most `budget` slots stay, and (when nothing merged) the kept
// K and V are the prompt's bit for bit.
void check_properties(const std::string& name, const kvtest::layout_cache<T, kc::layouts::strided>& prompt,
                      const kvtest::layout_cache<T, kc::layouts::strided>& result, index_t recent, index_t budget, bool merged) {
  BOOST_TEST_CONTEXT(name) {
    const auto before = slots_by_position(prompt);
    index_t lost = 0, duplicated = 0, unprotected = 0, over_budget = 0, changed = 0;
    for (std::size_t head = 0; head < result.lengths.size(); ++head) {
      std::set<std::int32_t> seen;
      const index_t n = result.lengths[head];
      over_budget += n > budget;
      for (index_t j = 0; j < n; ++j) {
        const std::int32_t p = result.positions[head * CAP + static_cast<std::size_t>(j)];
        duplicated += !seen.insert(p).second;
        const auto from = before[head].find(p);
        if (from == before[head].end()) {
          ++lost;
          continue;
        }
        if (merged) continue;
        const auto h = static_cast<index_t>(head);
        const index_t s = h / (L * H), l = h / H % L, k = h % H;
        for (index_t d = 0; d < D; ++d) {
          const auto a = static_cast<std::size_t>(prompt.layout.offset(s, l, k, from->second) + d);
          const auto b = static_cast<std::size_t>(result.layout.offset(s, l, k, j) + d);
          changed += prompt.keys[a].bits != result.keys[b].bits || prompt.values[a].bits != result.values[b].bits;
        }
      }
      for (std::int32_t p = PROMPT - static_cast<std::int32_t>(recent); p < PROMPT; ++p) unprotected += seen.count(p) == 0;
    }
    BOOST_TEST(lost == 0);
    BOOST_TEST(duplicated == 0);
    BOOST_TEST(unprotected == 0);
    BOOST_TEST(over_budget == 0);
    BOOST_TEST(changed == 0);
  }
}

/// The same prompt compressed by both backends, each with its own copy of the policy (they may
/// differ in where a component records something), ready for decode steps.
template <class Policy>
struct twin_sessions {
  using cpu_session = kc::cpu::session<Policy, T, kc::layouts::strided>;
  using gpu_session = kc::cuda::session<Policy, T, kc::layouts::strided>;
  kc::attention_shape shape{H * G};
  kvtest::layout_cache<T, kc::layouts::strided> prompt, cpu;
  kvtest::session_storage<Policy, T, kc::layouts::strided> cpu_storage;
  cpu_session reference;
  kvtest::device_cache<T, kc::layouts::strided> device;
  kvtest::device_window rows;
  kvtest::device_session_storage<gpu_session> storage;
  gpu_session gpu;

  twin_sessions(const kvtest::layout_cache<T, kc::layouts::strided>& cache, const kvtest::random_window& window, const Policy& on_cpu,
                const Policy& on_gpu)
      : prompt(cache),
        cpu(cache),
        cpu_storage(cpu.layout, shape),
        reference(on_cpu, cpu.view(), shape, cpu_storage.state_span(), cpu_storage.workspace_span()),
        device(cache),
        rows(window),
        storage(device.layout.layout, shape, ROWS),
        gpu(on_gpu, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, ROWS) {
    reference.compress_prefill(window.view());
    gpu.compress_prefill(rows.view());
  }

  /// Checks that both caches agree (ties within rounding, support/backend_comparison.hpp) and returns the GPU's.
  kvtest::layout_cache<T, kc::layouts::strided> compare() {
    gpu.check("twin_sessions");
    auto result = device.download(prompt);
    std::vector<bool> matches;
    const auto diff = kvtest::compare_snapshots<T>(kvtest::take_snapshot(cpu.view()), kvtest::take_snapshot(result.view()), Policy::merges, matches);
    BOOST_TEST(diff.acceptable, diff.first);
    return result;
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(user_components_run_on_the_device_as_on_the_cpu_at_prefill) {
  const auto cache = prompt_cache(501);
  const auto window = prompt_window(502);
  kvtest::device_array<int> device_size(std::vector<int>{0});
  int host_size = 0;
  const smoothed_top ranked{40, 6};
  const block_champions cooperative{5, 8, 6, 48, nullptr};
  namespace p = kc::policies;
  {
    const kc::policy<kc::scorers::key_norm, smoothed_top> policy{{}, ranked, {}};
    check_properties("ranked", cache, kvtest::check_prefill_matches("ranked", policy, cache, window, H * G), 6, 40, false);
  }
  {
    const kc::policy<kc::scorers::observation_window, smoothed_top, fold_backward> policy{{}, ranked, {0.25f}};
    check_properties("ranked + merger", cache, kvtest::check_prefill_matches("ranked + merger", policy, cache, window, H * G), 6, 40, true);
  }
  {
    // The CPU session and the GPU session get their own place to record the group size.
    block_champions on_cpu = cooperative, on_gpu = cooperative;
    on_cpu.group_size = &host_size;
    on_gpu.group_size = device_size.data();
    using policy_t = kc::policy<kc::scorers::key_norm, block_champions>;  // slot scores: the same on both backends
    twin_sessions<policy_t> twins(cache, window, policy_t{{}, on_cpu, {}}, policy_t{{}, on_gpu, {}});
    const auto result = twins.compare();
    BOOST_TEST(host_size == 1);
    BOOST_TEST(device_size.download()[0] == kc::cuda::detail::prefill_threads);  // ran on a whole block
    check_properties("cooperative", cache, result, 6, PROMPT, false);
  }
  {
    const kc::policy<kc::scorers::key_norm, smoothed_top, kc::mergers::cam> policy{{}, ranked, {}};
    kvtest::check_prefill_matches("ranked + cam", policy, cache, window, H * G);
  }
  {
    const kc::policy<kc::scorers::key_norm, kc::selectors::top_k<kc::budgets::fixed>, fold_backward> policy{{}, {kc::budgets::fixed{40}, {2, 6}}, {}};
    check_properties("top_k + merger", cache, kvtest::check_prefill_matches("top_k + merger", policy, cache, window, H * G), 6, 40, true);
  }
  {
    const auto policy = p::kvmerger(0.4);  // a built-in cooperative selector and merger, on shuffled slots
    check_properties("kvmerger", cache, kvtest::check_prefill_matches("kvmerger", policy, cache, window, H * G), 0, PROMPT * 4 / 10, true);
  }
}

BOOST_AUTO_TEST_CASE(user_components_evict_on_the_device_as_on_the_cpu_during_decode) {
  const auto cache = prompt_cache(503);
  const auto window = prompt_window(504);
  kvtest::device_array<int> device_size(std::vector<int>{0});
  int host_size = 0;
  auto run = [&](const std::string& name, const auto& cpu_policy, const auto& gpu_policy, index_t budget) {
    using policy_t = std::decay_t<decltype(cpu_policy)>;
    BOOST_TEST_CONTEXT(name) {
      twin_sessions<policy_t> twins(cache, window, cpu_policy, gpu_policy);
      std::mt19937 rng(505);
      std::vector<std::int32_t> positions(S, static_cast<std::int32_t>(PROMPT));
      for (int step = 0; step < 12; ++step) {
        const kvtest::device_array<std::int32_t> d_positions(positions);
        for (index_t l = 0; l < L; ++l) {
          std::vector<T> keys, values;
          for (float x : kvtest::random_vector(S * H * D, 1.0, rng)) keys.push_back(kc::from_float<T>(x));
          for (float x : kvtest::random_vector(S * H * D, 1.0, rng)) values.push_back(kc::from_float<T>(x));
          const kvtest::device_array<T> d_keys(keys), d_values(values);
          twins.gpu.append(l, d_keys.data(), d_values.data(), d_positions.data());
          for (index_t s = 0; s < S; ++s)
            twins.reference.append(s, l, keys.data() + s * H * D, values.data() + s * H * D, positions[static_cast<std::size_t>(s)]);
        }
        for (auto& p : positions) ++p;
      }
      const auto result = twins.compare();
      index_t over = 0, missing_newest = 0;
      for (std::size_t head = 0; head < result.lengths.size(); ++head) {
        over += result.lengths[head] > budget;
        std::set<std::int32_t> held(result.positions.begin() + static_cast<std::ptrdiff_t>(head * CAP),
                                    result.positions.begin() + static_cast<std::ptrdiff_t>(head * CAP) + result.lengths[head]);
        missing_newest += held.count(positions[0] - 1) == 0;
        BOOST_TEST(held.size() == static_cast<std::size_t>(result.lengths[head]));  // no position duplicated
      }
      BOOST_TEST(over == 0);
      BOOST_TEST(missing_newest == 0);
    }
  };
  const smoothed_top ranked{40, 6};
  run("ranked (pooled keys: decode sorts the slots on the device)", kc::policy<kc::scorers::key_norm, smoothed_top>{{}, ranked, {}},
      kc::policy<kc::scorers::key_norm, smoothed_top>{{}, ranked, {}}, 40);
  run("ranked + merger", kc::policy<kc::scorers::key_norm, smoothed_top, fold_backward>{{}, ranked, {0.25f}},
      kc::policy<kc::scorers::key_norm, smoothed_top, fold_backward>{{}, ranked, {0.25f}}, 40);
  block_champions on_cpu{5, 8, 6, 32, &host_size}, on_gpu{5, 8, 6, 32, device_size.data()};  // about 30 kept at prefill
  run("cooperative + cam", kc::policy<kc::scorers::key_norm, block_champions, kc::mergers::cam>{{}, on_cpu, {}},
      kc::policy<kc::scorers::key_norm, block_champions, kc::mergers::cam>{{}, on_gpu, {}}, 32);
  BOOST_TEST(host_size == 1);
  BOOST_TEST(device_size.download()[0] == kc::cuda::detail::prefill_threads);
}

#include "support/gpu_main.hpp"
