// SPDX-License-Identifier: Apache-2.0
// The memory contract of cpu::session (issue: "no allocation on the decode path: caller-provided
// workspace with a size query"), for every preset and for compositions no preset uses, in strided,
// paged and layer_condensed<paged> layouts:
//  - append, attend, observe and compress_prefill never call operator new (this executable replaces
//    the global allocation functions and counts the calls made while they run);
//  - the session never writes past state_bytes() / workspace_bytes() (guard bytes after both spans
//    stay untouched) and works with exactly that much memory;
//  - results do not depend on what the memory held before: runs over zero-filled and over 0xff-filled
//    state and workspace (NaN floats, -1 indices) give bit-identical caches and attention outputs, so no
//    stage reads scratch it did not write first (the defect fixed by commit 5e14465: window selectors
//    read per-query-head scores that the session never filled for slot scorers).
#include "support/custom_layout.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

// ---- counting global allocation functions (replaceable, [new.delete]) --------------------------------
// They allocate with malloc and release with free; g++ inlines them and would report the pairing of
// operator new with free as a mismatch, which it is not for replacement functions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
void* allocate(std::size_t size, std::size_t alignment) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (size == 0) size = 1;
  void* p = alignment <= alignof(std::max_align_t) ? std::malloc(size) : std::aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
  return p;
}
}  // namespace

void* operator new(std::size_t size) {
  if (void* p = allocate(size, alignof(std::max_align_t))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return ::operator new(size); }
void* operator new(std::size_t size, std::align_val_t alignment) {
  if (void* p = allocate(size, static_cast<std::size_t>(alignment))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t alignment) { return ::operator new(size, alignment); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return allocate(size, alignof(std::max_align_t)); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return allocate(size, alignof(std::max_align_t)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace kc = kvcompact;
using kc::index_t;

namespace {

constexpr index_t S = 2, L = 4, H = 2, G = 4, CAP = 64, D = 8, PROMPT = 44, STEPS = 12;
constexpr std::size_t GUARD = 256;

// Allocation calls made while `f` runs.
template <class F>
long allocations_during(F&& f) {
  const long before = allocations.load();
  counting.store(true);
  f();
  counting.store(false);
  return allocations.load() - before;
}

struct decode_inputs {
  std::vector<float> keys, values, queries;
  explicit decode_inputs(std::uint32_t seed) {
    std::mt19937 rng(seed);
    keys = kvtest::random_vector(STEPS * S * L * H * D, 1.0, rng);
    values = kvtest::random_vector(STEPS * S * L * H * D, 1.0, rng);
    queries = kvtest::random_vector(2 * STEPS * S * L * G * D, 2.0, rng);
  }
  const float* key(index_t t, index_t s, index_t l) const { return keys.data() + ((t * S + s) * L + l) * H * D; }
  const float* value(index_t t, index_t s, index_t l) const { return values.data() + ((t * S + s) * L + l) * H * D; }
  const float* query(index_t t, index_t s, index_t l, index_t which) const { return queries.data() + (((which * STEPS + t) * S + s) * L + l) * G * D; }
};

struct run_result {
  kvtest::snapshot after_prefill, after_decode;
  std::vector<std::uint32_t> outputs;
  long decode_allocations = 0;
  long prefill_allocations = 0;
  bool guards_intact = true;
  bool operator==(const run_result& o) const { return after_prefill == o.after_prefill && after_decode == o.after_decode && outputs == o.outputs; }
};

// Prefill + STEPS decode steps (append every storage layer; attend and observe every layer) with state
// and workspace of exactly state_bytes() / workspace_bytes() bytes, filled with `fill` and followed by
// GUARD guard bytes.
template <class Policy, class Layout>
run_result run(const Policy& policy, const kvtest::random_cache<float>& source, const Layout& layout, const kvtest::random_window& window,
               const decode_inputs& in, std::byte fill) {
  using session_t = kc::cpu::session<Policy, float, Layout>;
  auto c = kvtest::copy_into(source, layout);
  const kc::attention_shape shape{G};
  const std::size_t state_size = session_t::state_bytes(c.layout), work_size = session_t::workspace_bytes(c.layout, shape);
  std::vector<std::uint64_t> state_words((state_size + GUARD) / 8 + 1), work_words((work_size + GUARD) / 8 + 1);
  const auto state_all = std::as_writable_bytes(std::span(state_words)), work_all = std::as_writable_bytes(std::span(work_words));
  const std::byte guard{0x5a};
  std::fill(state_all.begin(), state_all.end(), guard);
  std::fill(work_all.begin(), work_all.end(), guard);
  std::fill(state_all.begin(), state_all.begin() + static_cast<std::ptrdiff_t>(state_size), fill);
  std::fill(work_all.begin(), work_all.begin() + static_cast<std::ptrdiff_t>(work_size), fill);
  session_t session(policy, c.view(), shape, state_all.first(state_size), work_all.first(work_size));

  run_result r;
  r.prefill_allocations = allocations_during([&] { session.compress_prefill(window.view()); });
  r.after_prefill = kvtest::take_snapshot(c.view());
  std::vector<float> out(static_cast<std::size_t>(STEPS * S * L * G * D));  // allocated before counting starts
  r.decode_allocations = allocations_during([&] {
    for (index_t step = 0; step < STEPS; ++step) {
      const index_t t = PROMPT + step;
      for (index_t s = 0; s < S; ++s)
        for (index_t l = 0; l < L; ++l) session.append(s, l, in.key(step, s, l), in.value(step, s, l), t);
      for (index_t s = 0; s < S; ++s)
        for (index_t l = 0; l < L; ++l) {
          const index_t attending = kc::layer_mapped_layout<Layout> ? 2 * l : l;  // CLA map below: model layer 2l reads storage l
          session.attend(s, attending, in.query(step, s, l, 0), t, out.data() + ((step * S + s) * L + l) * G * D);
          session.observe(s, attending, in.query(step, s, l, 1), t);
        }
    }
  });
  r.after_decode = kvtest::take_snapshot(c.view());
  for (float x : out) r.outputs.push_back(kvtest::element_bits(x));
  for (std::size_t i = state_size; i < state_all.size(); ++i) r.guards_intact = r.guards_intact && state_all[i] == guard;
  for (std::size_t i = work_size; i < work_all.size(); ++i) r.guards_intact = r.guards_intact && work_all[i] == guard;
  return r;
}

struct fixture {
  kvtest::random_cache<float> source;
  kvtest::random_window window;
  decode_inputs in{202};
  kvtest::random_paging paging;
  fixture()
      : source(kvtest::make_random_cache<float>({S, L, H, CAP, D}, {PROMPT, PROMPT}, 200)),
        window(kvtest::make_random_window(S, L, G, 8, D, {PROMPT - 1, PROMPT - 1}, 3.0, 201)) {
    kvtest::make_random_paging(paging, {S, L, H, CAP, D}, 8, kc::layouts::page_format::hnd, 2, 203);
  }

  // Zero-filled and poisoned runs in three layouts: no decode allocation, guards intact, identical results.
  template <class Policy>
  void check(const std::string& name, const Policy& policy) {
    BOOST_TEST_CONTEXT(name) {
      const kc::layouts::layer_condensed<kc::layouts::paged> condensed{paging.layout, kc::layouts::layer_map::cross_layer(2 * L, 2)};
      check_layout(policy, source.layout, "strided");
      check_layout(policy, paging.layout, "paged");
      check_layout(policy, condensed, "layer_condensed<paged>");
    }
  }

  template <class Policy, class Layout>
  void check_layout(const Policy& policy, const Layout& layout, const char* layout_name) {
    BOOST_TEST_CONTEXT(layout_name) {
      const run_result zero = run(policy, source, layout, window, in, std::byte{0x00});
      const run_result poisoned = run(policy, source, layout, window, in, std::byte{0xff});
      BOOST_TEST(zero.decode_allocations == 0, "append/attend/observe allocated " << zero.decode_allocations << " times");
      BOOST_TEST(poisoned.decode_allocations == 0);
      BOOST_TEST(zero.guards_intact, "wrote past state_bytes() or workspace_bytes()");
      BOOST_TEST(poisoned.guards_intact, "wrote past state_bytes() or workspace_bytes()");
      BOOST_TEST((zero == poisoned), "results depend on the initial content of state or workspace");
      BOOST_TEST(zero.prefill_allocations == 0, "compress_prefill allocated " << zero.prefill_allocations << " times");
      int compressed = 0;
      for (std::int32_t n : zero.after_prefill.lengths) compressed += n < PROMPT;
      BOOST_TEST(compressed > 0, "prefill compressed nothing: a weak run");
    }
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(every_preset_decodes_without_allocation_inside_its_workspace) {
  fixture f;
  kc::policies::preset_options options{20, PROMPT};
  options.window = 8;
  options.sinks = 4;
  options.layer_group = 2;
  for (std::string_view name : kc::policies::preset_names)
    kc::policies::with_preset(name, options, [&](auto policy) {
      f.check(std::string(name), policy);
      return 0;
    });
}

BOOST_AUTO_TEST_CASE(compositions_decode_without_allocation_inside_their_workspace) {
  fixture f;
  using windows_t = kc::selectors::windows<kc::budgets::fixed>;
  using top_k_t = kc::selectors::top_k<kc::budgets::fixed>;
  const windows_t localization{kc::budgets::fixed{16}, 4, 8, 2, kc::selectors::task_type::localization};
  const windows_t aggregation{kc::budgets::fixed{16}, 4, 8, 2, kc::selectors::task_type::aggregation};
  f.check("recency + windows", kc::policy<kc::scorers::recency, windows_t>{{}, localization, {}});
  f.check("key_norm + windows (aggregation)", kc::policy<kc::scorers::key_norm, windows_t>{{}, aggregation, {}});
  kc::scorers::recent_query importance{};
  importance.score_mode = kc::scorers::recent_query::mode::importance;
  f.check("corm importance + windows + gaussian_pivot", kc::policy<kc::scorers::recent_query, windows_t, kc::mergers::gaussian_pivot>{importance, localization, {}});
  f.check("key_norm + top_k(fraction) + average",
          kc::policy<kc::scorers::key_norm, kc::selectors::top_k<kc::budgets::fraction>, kc::mergers::average>{{}, {kc::budgets::fraction{0.5}, {2, 4}}, {}});
  kc::mergers::cam bernoulli{};
  bernoulli.expected = false;
  bernoulli.seed = 7;
  f.check("h2o + cam (Bernoulli)", kc::policy<kc::scorers::accumulated_attention, top_k_t, kc::mergers::cam>{{}, {kc::budgets::fixed{20}, {4, 4}}, bernoulli});
}
