// SPDX-License-Identifier: Apache-2.0
// The paged KV caches of vLLM and FlashInfer, viewed in place by layouts::vllm_paged and
// layouts::flashinfer_paged (memory built by support/engine_layouts.hpp as the engines allocate it):
//  - every key and value element the layouts address is the one the engine's own tensor holds for
//    that token (shape and stride order as the engine declares them), with cache.keys / cache.values
//    set as the layouts document, in one arena holding every layer's tensor: vLLM NHD and HND,
//    FlashInfer NHD and HND with K and V in one tensor or in two;
//  - every preset on the same prompts (three sequences of different lengths; FlashInfer requests
//    owning different numbers of pages) leaves the same keep-sets, per-head lengths, positions and
//    bit-identical K/V as the contiguous cache, and writes nothing outside the addressed slots;
//  - decoding afterwards (append + attend) gives bit-identical attention outputs and caches;
//  - bad tables, offsets and lengths are refused with kvcompact::error naming them.
#include "support/custom_layout.hpp"
#include "support/engine_layouts.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

namespace kc = kvcompact;
namespace lay = kc::layouts;
using kc::index_t;

namespace {

// A distinct, exactly representable value per element of the engine's tensors.
float code(index_t element) { return static_cast<float>(element % 8000000); }

// Writes every element of the engine's tensors through the engine's own index (code = that index), then
// checks that the layout reads, for every slot the layout maps, the element the engine wrote for it.
// `engine(l, kv, page, entry, h, d)` is the engine's index; `page_of(s, slot)` the page holding a slot.
template <class Layout, class Engine, class PageOf>
int count_misplaced(const Layout& layout, index_t arena_elements, index_t value_shift, index_t pages, index_t page_size, const Engine& engine,
                    const PageOf& page_of) {
  std::vector<float> arena(static_cast<std::size_t>(arena_elements), -1.0f);
  std::vector<int> writes(arena.size(), 0);
  for (index_t l = 0; l < layout.num_layers(); ++l)
    for (index_t kv = 0; kv < 2; ++kv)
      for (index_t p = 0; p < pages; ++p)
        for (index_t e = 0; e < page_size; ++e)
          for (index_t h = 0; h < layout.num_kv_heads(); ++h)
            for (index_t d = 0; d < layout.head_dim(); ++d) {
              const index_t at = engine(l, kv, p, e, h, d);
              BOOST_REQUIRE(at >= 0 && at < arena_elements);
              arena[static_cast<std::size_t>(at)] = code(at);
              ++writes[static_cast<std::size_t>(at)];
            }
  BOOST_TEST(*std::max_element(writes.begin(), writes.end()) == 1);  // the engine's tensors do not overlap
  const float* keys = arena.data();
  const float* values = keys + value_shift;
  int bad = 0, mapped = 0;
  for (index_t s = 0; s < layout.num_sequences(); ++s)
    for (index_t j = 0; j < layout.capacity(); ++j) {
      if (!layout.slot_in_range(s, j)) continue;
      ++mapped;
      for (index_t l = 0; l < layout.num_layers(); ++l)
        for (index_t h = 0; h < layout.num_kv_heads(); ++h)
          for (index_t d = 0; d < layout.head_dim(); ++d) {
            const index_t o = layout.offset(s, l, h, j) + d * layout.dim_stride();
            bad += keys[o] != code(engine(l, 0, page_of(s, j), j % page_size, h, d));
            bad += values[o] != code(engine(l, 1, page_of(s, j), j % page_size, h, d));
          }
    }
  BOOST_TEST(mapped > 0);
  return bad;
}

}  // namespace

BOOST_AUTO_TEST_CASE(vllm_offsets_are_the_elements_of_vllms_tensors) {
  const kvtest::cache_shape shape{3, 4, 2, 48, 8};
  std::uint32_t seed = 1;
  for (const auto format : {lay::page_format::nhd, lay::page_format::hnd}) {
    kvtest::vllm_memory m;
    kvtest::make_vllm_memory(m, shape, 16, format, 5, ++seed);
    BOOST_CHECK_NO_THROW(m.layout.validate("test"));
    BOOST_TEST(m.layout.capacity() == 48);
    const auto engine = [&](index_t l, index_t kv, index_t block, index_t e, index_t h, index_t d) { return m.engine_element(l, kv, block, e, h, d); };
    const auto block_of = [&](index_t s, index_t j) { return index_t{m.block_table[static_cast<std::size_t>(s * 3 + j / 16)]}; };
    BOOST_TEST(count_misplaced(m.layout, m.arena_elements, m.layout.value_offset(), m.layout.num_blocks, 16, engine, block_of) == 0,
               (format == lay::page_format::nhd ? "NHD" : "HND"));
  }
}

BOOST_AUTO_TEST_CASE(flashinfer_offsets_are_the_elements_of_flashinfers_tensors) {
  const kvtest::cache_shape shape{3, 3, 2, 48, 8};
  std::uint32_t seed = 10;
  for (const auto format : {lay::page_format::nhd, lay::page_format::hnd})
    for (const bool one_tensor : {true, false}) {
      kvtest::flashinfer_memory m;
      kvtest::make_flashinfer_memory(m, shape, {3, 1, 2}, 16, format, one_tensor, 4, ++seed);
      BOOST_CHECK_NO_THROW(m.layout.validate("test"));
      const auto engine = [&](index_t l, index_t kv, index_t page, index_t e, index_t h, index_t d) { return m.engine_element(l, kv, page, e, h, d); };
      const auto page_of = [&](index_t s, index_t j) { return index_t{m.indices[static_cast<std::size_t>(m.indptr[static_cast<std::size_t>(s)] + j / 16)]}; };
      BOOST_TEST(count_misplaced(m.layout, m.arena_elements, m.value_shift, m.layout.max_num_pages, 16, engine, page_of) == 0,
                 (format == lay::page_format::nhd ? "NHD" : "HND") << (one_tensor ? ", one tensor" : ", K and V tensors"));
      // request 1 owns one page: its slots from 16 on are not mapped
      BOOST_TEST(m.layout.slot_in_range(1, 15));
      BOOST_TEST(!m.layout.slot_in_range(1, 16));
      BOOST_TEST(m.layout.slot_in_range(0, 47));
    }
}

namespace {

constexpr index_t S = 3, L = 3, H = 2, G = 4, CAP = 64, D = 8, PAGE = 16, ROWS = 8;
const std::vector<index_t> prompts{64, 41, 23};

// Three prompts of different lengths (every head of a sequence as long as its prompt), positions 0..n-1.
kvtest::random_cache<float> prompt_cache(std::uint32_t seed) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = CAP;
  auto c = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
  kvtest::set_prompt_lengths(c, prompts);
  return c;
}

kvtest::random_window prompt_window(std::uint32_t seed) {
  return kvtest::make_random_window(S, L, G, ROWS, D, {prompts[0] - 1, prompts[1] - 1, prompts[2] - 1}, 4.0, seed);
}

std::vector<index_t> pages_for(index_t extra) { return kvtest::pages_for(prompts, extra, PAGE, CAP); }

template <class T, class Layout>
std::size_t filler_count(const kvtest::layout_cache<T, Layout>& c) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < c.keys.size(); ++i) n += (kvtest::element_bits(c.keys[i]) == 0x77777777u) + (kvtest::element_bits(c.values[i]) == 0x77777777u);
  return n;
}

// What a run leaves: the cache's snapshot and every attention output of the decode steps.
struct run_result {
  kvtest::snapshot cache;
  std::vector<float> outputs;
};

// Compresses a copy of `source` in `layout`, then decodes `steps` tokens for every sequence (append +
// attend per layer, with K/V/Q drawn from a fixed seed, so every layout sees the same tokens).
template <class Policy, class Layout>
run_result run_in(const Policy& policy, const kvtest::random_cache<float>& source, const Layout& layout, const kvtest::random_window& w,
                  index_t steps) {
  auto c = kvtest::copy_into(source, layout);
  const std::size_t fillers = filler_count(c);
  const kc::attention_shape shape{G};
  kvtest::session_storage<Policy, float, Layout> storage(layout, shape);
  kc::cpu::session<Policy, float, Layout> session(policy, c.view(), shape, storage.state_span(), storage.workspace_span());
  session.compress_prefill(w.view());
  run_result out;
  std::mt19937 rng(77);
  std::vector<float> attention(G * D);
  for (index_t t = 0; t < steps; ++t)
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l) {
        const auto k = kvtest::random_vector(H * D, 1.0, rng), v = kvtest::random_vector(H * D, 1.0, rng), q = kvtest::random_vector(G * D, 2.0, rng);
        const index_t position = prompts[static_cast<std::size_t>(s)] + t;
        session.append(s, l, k.data(), v.data(), position);
        session.attend(s, l, q.data(), position, attention.data());
        out.outputs.insert(out.outputs.end(), attention.begin(), attention.end());
      }
  BOOST_TEST(filler_count(c) == fillers, "storage that no slot addresses was written");
  out.cache = kvtest::take_snapshot(c.view());
  return out;
}

// Runs `policy` through the contiguous cache and every engine layout; all must agree bit for bit.
template <class Policy>
kvtest::snapshot check_every_engine_layout(const std::string& name, const Policy& policy, const kvtest::random_cache<float>& source,
                                           const kvtest::random_window& w, index_t steps) {
  const kvtest::engine_layout_set layouts({S, L, H, CAP, D}, prompts, steps, PAGE, 21);
  const run_result reference = run_in(policy, source, source.layout, w, steps);
  layouts.for_each([&](const auto& layout, const char* which) {
    const run_result got = run_in(policy, source, layout, w, steps);
    BOOST_TEST((got.cache == reference.cache), name << ": " << which << " keeps other slots or K/V than the contiguous cache");
    BOOST_TEST((got.outputs == reference.outputs), name << ": " << which << " attention outputs differ from the contiguous cache");
  });
  return reference.cache;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_preset_compresses_engine_caches_as_the_contiguous_cache) {
  const auto source = prompt_cache(31);
  const auto w = prompt_window(32);
  kc::policies::preset_options options{20, 41};
  options.window = 8;
  options.layer_group = 2;
  int per_head_lengths = 0;
  for (std::string_view name : kc::policies::preset_names) {
    kc::policies::with_preset(name, options, [&](auto policy) {
      const kvtest::snapshot reference = check_every_engine_layout(std::string(name), policy, source, w, 0);
      int compressed = 0;
      for (std::size_t head = 0; head < reference.lengths.size(); ++head) {
        compressed += reference.lengths[head] < prompts[head / (L * H)];
        per_head_lengths += head % H != 0 && reference.lengths[head] != reference.lengths[head - 1];
      }
      BOOST_TEST(compressed > 0, name << " compressed nothing: the comparison would be weak");
      return 0;
    });
  }
  BOOST_TEST(per_head_lengths > 0, "no preset left heads of different lengths: per-head lengths went untested");
}

BOOST_AUTO_TEST_CASE(decoding_in_engine_caches_gives_the_contiguous_outputs) {
  const auto source = prompt_cache(41);
  const auto w = prompt_window(42);
  namespace p = kc::policies;
  constexpr index_t steps = 6;
  check_every_engine_layout("h2o (evicts)", p::h2o(20, 4), source, w, steps);
  check_every_engine_layout("streaming_llm (evicts)", p::streaming_llm(20, 4), source, w, steps);
  check_every_engine_layout("cam (evicts and merges)", p::cam(20, 4), source, w, steps);
  check_every_engine_layout("snapkv (appends)", p::snapkv(20, 8), source, w, steps);
  const kvtest::snapshot adakv = check_every_engine_layout("adakv (per-head lengths, appends)", p::adakv(20, 8), source, w, steps);
  int differing = 0;
  for (std::size_t head = 1; head < adakv.lengths.size(); ++head) differing += head % H != 0 && adakv.lengths[head] != adakv.lengths[head - 1];
  BOOST_TEST(differing > 0, "Ada-KV left every head of a layer at the same length");
}

BOOST_AUTO_TEST_CASE(bad_engine_tables_are_refused_naming_them) {
  const auto source = prompt_cache(51);
  const kvtest::cache_shape shape{S, L, H, CAP, D};
  const auto policy = kc::policies::knorm(20);
  using policy_t = decltype(policy);
  const kc::attention_shape attention{G};
  // The argument a session refuses `c` for (caches are filled through good tables, then the tables are broken).
  const auto refused_argument = [&](auto& c) -> std::string {
    using layout_t = std::decay_t<decltype(c.layout)>;
    try {  // the size queries (storage) validate the layout too
      kvtest::session_storage<policy_t, float, layout_t> storage(c.layout, attention);
      kc::cpu::session<policy_t, float, layout_t> session(policy, c.view(), attention, storage.state_span(), storage.workspace_span());
    } catch (const kc::error& e) {
      return e.argument();
    }
    return "(accepted)";
  };

  kvtest::vllm_memory v;
  kvtest::make_vllm_memory(v, shape, PAGE, lay::page_format::nhd, 0, 61);
  auto vc = kvtest::copy_into(source, v.layout);  // its layout points into v's tables
  BOOST_TEST(refused_argument(vc) == "(accepted)");
  const index_t saved = v.layer_offsets[1];
  v.layer_offsets[1] = v.layer_offsets[0] + 1;  // layer 1's tensor overlaps layer 0's
  BOOST_TEST(refused_argument(vc) == "layout.layer_offsets");
  v.layer_offsets[1] = -8;
  BOOST_TEST(refused_argument(vc) == "layout.layer_offsets");
  v.layer_offsets[1] = saved;
  v.block_table[5] = static_cast<std::int32_t>(v.layout.num_blocks);
  BOOST_TEST(refused_argument(vc) == "layout.block_table");

  kvtest::flashinfer_memory f;
  kvtest::make_flashinfer_memory(f, shape, pages_for(0), PAGE, lay::page_format::hnd, true, 0, 62);
  auto fc = kvtest::copy_into(source, f.layout);
  BOOST_TEST(refused_argument(fc) == "(accepted)");
  fc.lengths[static_cast<std::size_t>(source.head_index(2, 1, 1))] = 33;  // request 2 owns two pages: 32 slots
  BOOST_TEST(refused_argument(fc) == "cache.lengths");
  fc.lengths = source.lengths;
  const std::int32_t page = f.indices[3];
  f.indices[3] = static_cast<std::int32_t>(f.layout.max_num_pages);
  BOOST_TEST(refused_argument(fc) == "layout.indices");
  f.indices[3] = page;
  f.indptr[0] = 1;
  BOOST_TEST(refused_argument(fc) == "layout.indptr");
  f.indptr[0] = 0;
  fc.layout.max_pages_per_request = 2;  // request 0 owns 4 pages
  BOOST_TEST(refused_argument(fc) == "layout.indptr");
  fc.layout.max_pages_per_request = 4;
  fc.layout.stride.head = D;  // HND pages need stride_h >= page_size * stride_n
  BOOST_TEST(refused_argument(fc) == "layout.stride");
}

BOOST_AUTO_TEST_CASE(appending_past_the_pages_a_request_owns_is_refused) {
  const auto source = prompt_cache(71);
  kvtest::flashinfer_memory f;
  kvtest::make_flashinfer_memory(f, {S, L, H, CAP, D}, pages_for(0), PAGE, lay::page_format::nhd, true, 0, 72);
  auto c = kvtest::copy_into(source, f.layout);
  const auto policy = kc::policies::snapkv(CAP, 8);  // never evicts: every append needs a new slot
  using layout_t = lay::flashinfer_paged;
  const kc::attention_shape attention{G};
  kvtest::session_storage<decltype(policy), float, layout_t> storage(f.layout, attention);
  kc::cpu::session<decltype(policy), float, layout_t> session(policy, c.view(), attention, storage.state_span(), storage.workspace_span());
  std::vector<float> k(H * D, 0.5f), v(H * D, 0.25f);
  // request 2: prompt 23 in two pages (32 slots): nine appends fit, the tenth needs a third page
  for (index_t t = 0; t < 9; ++t) BOOST_CHECK_NO_THROW(session.append(2, 0, k.data(), v.data(), 23 + t));
  const auto before = c.lengths;
  try {
    session.append(2, 0, k.data(), v.data(), 32);
    BOOST_FAIL("an append past the request's pages was accepted");
  } catch (const kc::error& e) {
    BOOST_TEST(e.argument() == "cache");
    BOOST_TEST(std::string(e.what()).find("add a page") != std::string::npos);
  }
  BOOST_TEST((c.lengths == before), "a refused append changed the lengths");
}
