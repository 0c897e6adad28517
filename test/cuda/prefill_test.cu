// SPDX-License-Identifier: Apache-2.0
// GPU test: kvcompact::cuda::session::compress_prefill leaves the cache exactly as
// kvcompact::cpu::session does (keep-sets, positions, bit-identical K/V, budgets, decode states; ties
// within rounding allowed as support/backend_comparison.hpp describes), for every preset on a BHSD
// bf16 cache, and for a selection of presets on fp16 BSHD, fp32 paged (NHD and HND, device page
// table), layer-condensed and a user-defined layout written in this file, and for the presets with a
// per-layer table (PrefixKV, XKV) and the bounded slot memory, and for ragged layers (per-layer
// capacities, the largest tiling the top-k and the compaction). The window scores
// themselves are checked against the double-precision reference with a stated tolerance for head
// dimensions 64, 128 and a generic one, groups 1 and 4, windows of 1, 5, 16 and 40 rows and of all
// prompt queries, contiguous, paged and layer-condensed layouts, bf16, fp16 and fp32.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/backend_comparison.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

constexpr index_t S = 2, L = 4, H = 2, G = 2, CAP = 96, D = 32, ROWS = 8;
constexpr index_t BUDGET = 40, WINDOW = 8;
constexpr index_t prompt_length(index_t s) { return s == 0 ? 96 : 77; }

// Keys and values are multiples of 1/64 in [-2, 2), exact in fp32, fp16 and bf16.
kvtest::random_cache<float> prompt_cache(std::uint32_t seed, index_t layers = L) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = prompt_length(0);
  auto c = kvtest::make_random_cache<float>({S, layers, H, CAP, D}, fill, seed);
  kvtest::round_to_exact_values(c);
  for (index_t l = 0; l < layers; ++l)
    for (index_t h = 0; h < H; ++h) c.lengths[static_cast<std::size_t>(c.head_index(1, l, h))] = static_cast<std::int32_t>(prompt_length(1));
  return c;
}

// One sequence on a BHSD bf16 cache whose heads are all full (length = capacity), values exact.
auto full_bf16_cache(index_t layers, index_t capacity, index_t dims, std::uint32_t seed) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = capacity;
  auto source = kvtest::make_random_cache<float>({1, layers, H, capacity, dims}, fill, seed);
  kvtest::round_to_exact_values(source);
  return kvtest::copy_into(kvtest::convert_cache<kc::bfloat16_t>(source), kc::layouts::bhsd(1, layers, H, capacity, dims));
}

kvtest::random_window prompt_window(index_t layers, std::uint32_t seed) {
  return kvtest::make_random_window(S, layers, H * G, ROWS, D, {prompt_length(0) - 1, prompt_length(1) - 1}, 1.0, seed);
}

// Calls f(name, policy) for every preset of policies::preset_names, with the test's budgets.
template <class F>
void for_each_preset(F&& f) {
  namespace p = kc::policies;
  f("streaming_llm", p::streaming_llm(BUDGET, 4));
  f("h2o", p::h2o(BUDGET, WINDOW));
  f("tova", p::tova(BUDGET));
  f("snapkv", p::snapkv(BUDGET, WINDOW));
  f("pyramidkv", p::pyramidkv(BUDGET, WINDOW));
  f("adakv", p::adakv(BUDGET, WINDOW));
  f("knorm", p::knorm(BUDGET));
  f("corm", p::corm(WINDOW, WINDOW));
  f("corm_budgeted", p::corm_budgeted(BUDGET, WINDOW));
  f("windowkv", p::windowkv(BUDGET - WINDOW, 2, kc::selectors::task_type::localization, 8, WINDOW));
  f("kvmerger", p::kvmerger(0.5));
  f("cam", p::cam(BUDGET, 4));
}

// Un-pooled top-k over the raw scores of an attention scorer, nothing protected: keep-set differences
// can then be judged against the reference scores directly.
using plain_top_k = kc::selectors::top_k<kc::budgets::fixed>;
template <class Scorer>
kc::policy<Scorer, plain_top_k> ranked_by(Scorer scorer, index_t budget) {
  return {scorer, plain_top_k{kc::budgets::fixed{budget}, {0, 0, kc::selectors::pooling::none, 1}, -3.402823466e38f, false}, {}};
}

// A cache of one sequence, two layers, two KV heads, 80 slots, head lengths in [50, 80] (equal and
// position-aligned across heads when @p aligned), keys exact in every storage type.
template <class T>
kvtest::random_cache<T> scoring_cache(index_t dims, bool aligned, std::uint32_t seed) {
  kvtest::fill_options fill;
  fill.min_length = 50;
  fill.max_length = 80;
  fill.aligned_heads = aligned;
  auto c = kvtest::make_random_cache<float>({1, 2, H, 80, dims}, fill, seed);
  kvtest::round_to_exact_values(c);
  return kvtest::convert_cache<T>(c);
}

}  // namespace

BOOST_AUTO_TEST_CASE(window_scores_match_the_double_reference) {
  namespace sc = kc::scorers;
  constexpr index_t budget = 24;
  {  // bf16, head_dim 128, group 4, 16 window rows, contiguous
    const auto cache = kvtest::copy_into(scoring_cache<kc::bfloat16_t>(128, false, 81), kc::layouts::bhsd(1, 2, H, 80, 128));
    const auto window = kvtest::make_random_window(1, 2, 4 * H, 16, 128, {79}, 1.0, 82);
    kvtest::check_scores_against_reference("bf16 d128 g4 w16", ranked_by(sc::observation_window{}, budget), cache, window, 4 * H, budget);
  }
  {  // fp16, head_dim 64, group 1, one row (TOVA: scores shared by all KV heads), paged NHD
    const auto source = scoring_cache<kc::half_t>(64, true, 83);
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, source.shape, 16, kc::layouts::page_format::nhd, 2, 84);
    const auto cache = kvtest::copy_into(source, paging.layout);
    const auto window = kvtest::make_random_window(1, 2, H, 1, 64, {79}, 1.0, 85);
    kvtest::check_scores_against_reference("fp16 d64 g1 w1 paged", ranked_by(sc::last_query{}, budget), cache, window, H, budget);
  }
  {  // fp32 (tf32 products), generic head_dim 40, group 4, 5 rows (padded to 8)
    const auto cache = kvtest::copy_into(scoring_cache<float>(40, false, 86), kc::layouts::bshd(1, 2, H, 80, 40));
    const auto window = kvtest::make_random_window(1, 2, 4 * H, 5, 40, {79}, 1.0, 87);
    kvtest::check_scores_against_reference("fp32 d40 g4 w5", ranked_by(sc::accumulated_attention{}, budget), cache, window, 4 * H, budget);
  }
  {  // bf16, head_dim 64, group 1, every prompt query (80 rows), layer-condensed; mean over rows, max over the group
    const auto map = kc::layouts::layer_map::cross_layer(4, 2);
    const kc::layouts::layer_condensed<kc::layouts::strided> layout{kc::layouts::bhsd(1, map.cache_layers, H, 80, 64), map};
    const auto cache = kvtest::copy_into(scoring_cache<kc::bfloat16_t>(64, false, 88), layout);
    const auto window = kvtest::make_random_window(1, 2, H, 80, 64, {79}, 1.0, 89);
    sc::observation_window scorer;
    scorer.rows = kc::reduction::mean;
    scorer.group = kc::reduction::max;
    kvtest::check_scores_against_reference("bf16 d64 g1 all prompt rows, layer-condensed", ranked_by(scorer, budget), cache, window, H, budget);
  }
  {  // bf16, head_dim 128, group 4, 40 rows: more rows than the emulator's 48 KiB of shared memory, so staged block by block; paged HND
    const auto source = scoring_cache<kc::bfloat16_t>(128, false, 90);
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, source.shape, 16, kc::layouts::page_format::hnd, 1, 91);
    const auto cache = kvtest::copy_into(source, paging.layout);
    const auto window = kvtest::make_random_window(1, 2, 4 * H, 40, 128, {79}, 1.0, 92);
    kvtest::check_scores_against_reference("bf16 d128 g4 w40 paged, staged rows", ranked_by(sc::observation_window{}, budget), cache, window, 4 * H,
                                           budget);
  }
}

BOOST_AUTO_TEST_CASE(every_preset_matches_the_cpu_backend_on_bhsd_bf16) {
  const auto cache = kvtest::copy_into(kvtest::convert_cache<kc::bfloat16_t>(prompt_cache(11)), kc::layouts::bhsd(S, L, H, CAP, D));
  const auto window = prompt_window(L, 12);
  for_each_preset([&](const char* name, const auto& policy) { kvtest::check_prefill_matches(name, policy, cache, window, H * G); });
}

BOOST_AUTO_TEST_CASE(fp16_bshd_matches_the_cpu_backend) {
  const auto cache = kvtest::copy_into(kvtest::convert_cache<kc::half_t>(prompt_cache(21)), kc::layouts::bshd(S, L, H, CAP, D));
  const auto window = prompt_window(L, 22);
  namespace p = kc::policies;
  kvtest::check_prefill_matches("snapkv", p::snapkv(BUDGET, WINDOW), cache, window, H * G);
  kvtest::check_prefill_matches("h2o", p::h2o(BUDGET, WINDOW), cache, window, H * G);
  kvtest::check_prefill_matches("kvmerger", p::kvmerger(0.35), cache, window, H * G);
}

BOOST_AUTO_TEST_CASE(fp32_paged_with_a_device_page_table_matches_the_cpu_backend) {
  const auto source = prompt_cache(31);
  const auto window = prompt_window(L, 32);
  namespace p = kc::policies;
  for (const auto format : {kc::layouts::page_format::nhd, kc::layouts::page_format::hnd}) {
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, source.shape, 16, format, 3, 33);
    const auto cache = kvtest::copy_into(source, paging.layout);
    kvtest::check_prefill_matches("snapkv", p::snapkv(BUDGET, WINDOW), cache, window, H * G);
    kvtest::check_prefill_matches("adakv", p::adakv(BUDGET, WINDOW), cache, window, H * G);
    kvtest::check_prefill_matches("windowkv", p::windowkv(BUDGET - WINDOW, 2, kc::selectors::task_type::aggregation, 8, WINDOW), cache, window,
                                  H * G);
    kvtest::check_prefill_matches("cam", p::cam(BUDGET, 4), cache, window, H * G);
  }
}

BOOST_AUTO_TEST_CASE(layer_condensed_matches_the_cpu_backend) {
  // LCKV with 6 model layers, warm-up 1 bottom + 1 top: cache layers {0, 4, 5}.
  const auto map = kc::layouts::layer_map::lckv(6, 1, 1);
  const index_t cache_layers = map.cache_layers;
  const kc::layouts::layer_condensed<kc::layouts::strided> layout{kc::layouts::bhsd(S, cache_layers, H, CAP, D), map};
  const auto cache = kvtest::copy_into(kvtest::convert_cache<kc::bfloat16_t>(prompt_cache(41, cache_layers)), layout);
  const auto window = prompt_window(cache_layers, 42);
  namespace p = kc::policies;
  kvtest::check_prefill_matches("snapkv", p::snapkv(BUDGET, WINDOW), cache, window, H * G);
  kvtest::check_prefill_matches("tova", p::tova(BUDGET), cache, window, H * G);
}

BOOST_AUTO_TEST_CASE(long_prompts_span_several_key_chunks_and_scan_blocks) {
  // 1100 slots: three window-kernel key chunks (512 keys each), five 256-slot scan blocks.
  constexpr index_t long_capacity = 1100;
  const auto cache = full_bf16_cache(1, long_capacity, D, 61);
  const auto window = kvtest::make_random_window(1, 1, H * G, ROWS, D, {long_capacity - 1}, 1.0, 62);
  namespace p = kc::policies;
  kvtest::check_prefill_matches("snapkv", p::snapkv(300, WINDOW), cache, window, H * G);
  kvtest::check_prefill_matches("h2o", p::h2o(300, WINDOW), cache, window, H * G);
  kvtest::check_prefill_matches("corm", p::corm(WINDOW, WINDOW), cache, window, H * G);
}

BOOST_AUTO_TEST_CASE(heads_longer_than_a_top_k_tile_match_the_cpu_backend) {
  // 4500 slots: three 2,048-key tiles per head for the grid-wide top-k, eighteen 256-slot
  // compaction tiles; KNorm's scores of exact keys tie often.
  constexpr index_t long_capacity = 4500;
  const auto cache = full_bf16_cache(1, long_capacity, D, 81);
  const auto window = kvtest::make_random_window(1, 1, H * G, ROWS, D, {long_capacity - 1}, 1.0, 82);
  namespace p = kc::policies;
  kvtest::check_prefill_matches("knorm", p::knorm(1100), cache, window, H * G);
  kvtest::check_prefill_matches("streaming_llm", p::streaming_llm(1100, 4), cache, window, H * G);
}

BOOST_AUTO_TEST_CASE(head_dims_of_every_kernel_path_match_the_cpu_backend) {
  // 256: window kernels hold 16 rows per pass; 40: not a multiple of 16, so bf16 logits take the FMA
  // path instead of tensor cores, and rows are not 16-byte multiples (scalar loads).
  for (const index_t dims : {index_t{256}, index_t{40}}) {
    const auto cache = full_bf16_cache(2, CAP, dims, 71);
    const auto window = kvtest::make_random_window(1, 2, H * G, ROWS, dims, {CAP - 1}, 1.0, 72);
    namespace p = kc::policies;
    kvtest::check_prefill_matches("snapkv head_dim " + std::to_string(dims), p::snapkv(BUDGET, WINDOW), cache, window, H * G);
    kvtest::check_prefill_matches("corm_budgeted head_dim " + std::to_string(dims), p::corm_budgeted(BUDGET, WINDOW), cache, window, H * G);
  }
}

BOOST_AUTO_TEST_CASE(per_layer_table_bounded_memory_and_elastic_presets_match_the_cpu_backend) {
  // PrefixKV's layer-shared scores need aligned heads (equal lengths): sequence 0's prompt everywhere
  auto source = prompt_cache(81);
  for (auto& n : source.lengths) n = static_cast<std::int32_t>(prompt_length(0));
  const auto cache = kvtest::copy_into(kvtest::convert_cache<kc::bfloat16_t>(source), kc::layouts::bhsd(S, L, H, CAP, D));
  const auto window = kvtest::make_random_window(S, L, H * G, prompt_length(0), D, {prompt_length(0) - 1, prompt_length(0) - 1}, 1.0, 82);
  const std::vector<double> keep{0.2, 0.55, 0.35, 0.9};
  const auto table = kc::budgets::layer_table::fractions(keep);
  namespace p = kc::policies;
  kvtest::check_prefill_matches("prefixkv", p::prefixkv(table), cache, window, H * G);
  kvtest::check_prefill_matches("xkv", p::xkv(table, WINDOW), cache, prompt_window(L, 83), H * G);
  kvtest::check_prefill_matches("bounded_memory", p::bounded_memory(BUDGET, WINDOW), cache, window, H * G);
  kvtest::check_prefill_matches("elastic_cache", p::elastic_cache(0.6), cache, window, H * G);
}

BOOST_AUTO_TEST_CASE(ragged_layers_of_different_capacities_match_the_cpu_backend) {
  // Per-layer capacities {2100, 40, 96}: the top-k and the compaction are tiled for the largest layer
  // (two 2,048-key top-k tiles, nine 256-slot compaction tiles per head), so heads of the small layers
  // leave most of their tiles empty; layer 1 is full at its own capacity, layer 2 is not.
  const std::vector<index_t> capacities{2100, 40, 96};
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = capacities[0];
  auto source = kvtest::make_random_cache<float>({1, 3, H, capacities[0], D}, fill, 91);
  kvtest::round_to_exact_values(source);
  for (index_t h = 0; h < H; ++h) {
    source.lengths[static_cast<std::size_t>(source.head_index(0, 1, h))] = static_cast<std::int32_t>(capacities[1]);
    source.lengths[static_cast<std::size_t>(source.head_index(0, 2, h))] = 77;
  }
  const auto cache =
      kvtest::copy_into(kvtest::convert_cache<kc::bfloat16_t>(source), kc::layouts::ragged_layers::make(1, capacities, H, D));
  const auto window = kvtest::make_random_window(1, 3, H * G, ROWS, D, {capacities[0] - 1}, 1.0, 92);
  namespace p = kc::policies;
  kvtest::check_prefill_matches("snapkv", p::snapkv(30, WINDOW), cache, window, H * G);
  kvtest::check_prefill_matches("knorm", p::knorm(36), cache, window, H * G);  // budgets must fit every layer
  kvtest::check_prefill_matches("adakv", p::adakv(30, WINDOW), cache, window, H * G);
}

BOOST_AUTO_TEST_CASE(a_user_layout_matches_the_cpu_backend) {
  const auto cache = kvtest::copy_into(kvtest::convert_cache<kc::bfloat16_t>(prompt_cache(51)), head_major_padded{S, L, H, CAP, D});
  const auto window = prompt_window(L, 52);
  namespace p = kc::policies;
  kvtest::check_prefill_matches("snapkv", p::snapkv(BUDGET, WINDOW), cache, window, H * G);
  kvtest::check_prefill_matches("knorm", p::knorm(BUDGET), cache, window, H * G);
  kvtest::check_prefill_matches("corm", p::corm(WINDOW, WINDOW), cache, window, H * G);
}

#include "support/gpu_main.hpp"
