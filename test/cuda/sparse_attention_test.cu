// SPDX-License-Identifier: Apache-2.0
// GPU test: decode attention over CSR codes (kvcompact::cuda::sparse_attention, docs/methods.md 13.7)
// against a double-precision reference that decodes every key and value from its code and runs plain
// softmax attention over them (no dictionary projection), on random codes with fixed seeds:
//  - head_dim 32, 64, 96 and 128, 1 to 8 terms, GQA groups 1 to 4, dictionaries of 40 to 256 atoms,
//    heads of different lengths (one empty: zero output), codes naming an atom twice;
//  - codes written by kvcompact::codecs::sparse_cache (matching pursuit) and copied to the device: the
//    GPU matches the reference and the CPU's sparse_cache::attend;
//  - bad arguments are named by kvcompact::error; atom indices outside the dictionary (in keys, values
//    or both: check() names the first such slot, the head's output stays unwritten) and a length
//    outside [0, capacity] are raised by check().
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/codecs/sparse_cache.hpp>
#include <kvcompact/cuda.cuh>

#include "support/device_cache.hpp"
#include "support/expect_error.hpp"
#include "support/reference.hpp"

#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;
using kc::codecs::entry_half;

namespace {

struct extents {
  index_t layers, kv_heads, capacity, terms, head_dim, atoms;
};

/// Codes, lengths and dictionaries in host memory, with their view.
struct host_codes {
  std::vector<std::uint16_t> indices;
  std::vector<kc::half_t> weights;
  std::vector<std::int32_t> lengths;
  std::vector<float> dictionaries;
  kc::codecs::sparse_codes view;
};

/// Unit-norm random atoms, random codes (any atom, repeats allowed; weights in [-2, 2] as fp16) and
/// random lengths in [0, capacity] (the first head of layer 0 empty, the last head full).
host_codes random_codes(const extents& e, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::uniform_int_distribution<int> atom(0, static_cast<int>(e.atoms - 1));
  host_codes c;
  const auto heads = static_cast<std::size_t>(e.layers * e.kv_heads);
  c.dictionaries.resize(heads * 2 * static_cast<std::size_t>(e.atoms * e.head_dim));
  for (std::size_t a = 0; a < c.dictionaries.size(); a += static_cast<std::size_t>(e.head_dim)) {
    double norm = 0.0;
    for (index_t d = 0; d < e.head_dim; ++d) norm += std::pow(c.dictionaries[a + static_cast<std::size_t>(d)] = uniform(rng), 2);
    for (index_t d = 0; d < e.head_dim; ++d) c.dictionaries[a + static_cast<std::size_t>(d)] = static_cast<float>(c.dictionaries[a + static_cast<std::size_t>(d)] / std::sqrt(norm));
  }
  c.indices.resize(heads * static_cast<std::size_t>(e.capacity * 2 * e.terms));
  c.weights.resize(c.indices.size());
  for (std::size_t i = 0; i < c.indices.size(); ++i) {
    c.indices[i] = static_cast<std::uint16_t>(atom(rng));
    c.weights[i] = kc::from_float<kc::half_t>(2.0f * uniform(rng));
  }
  std::uniform_int_distribution<int> length(1, static_cast<int>(e.capacity));
  for (std::size_t h = 0; h < heads; ++h) c.lengths.push_back(h == 0 ? 0 : h + 1 == heads ? static_cast<std::int32_t>(e.capacity) : length(rng));
  c.view = {c.indices.data(), c.weights.data(), c.lengths.data(), c.dictionaries.data(), e.layers, e.kv_heads, e.capacity, e.terms, e.head_dim, e.atoms};
  return c;
}

/// Device copies of the arrays a host view points to, and the view of those copies.
struct device_codes {
  kvtest::device_array<std::uint16_t> indices;
  kvtest::device_array<kc::half_t> weights;
  kvtest::device_array<std::int32_t> lengths;
  kvtest::device_array<float> dictionaries;
  kc::codecs::sparse_codes view;
  explicit device_codes(const kc::codecs::sparse_codes& host)
      : indices(copy(host.indices, host.layers * host.kv_heads * host.capacity * 2 * host.terms)),
        weights(copy(host.weights, host.layers * host.kv_heads * host.capacity * 2 * host.terms)),
        lengths(copy(host.lengths, host.layers * host.kv_heads)),
        dictionaries(copy(host.dictionaries, host.layers * host.kv_heads * 2 * host.atoms * host.head_dim)),
        view(host) {
    view.indices = indices.data(), view.weights = weights.data(), view.lengths = lengths.data(), view.dictionaries = dictionaries.data();
  }
  template <class T>
  static std::vector<T> copy(const T* from, index_t count) {
    return std::vector<T>(from, from + count);
  }
};

/// The vector a code stands for, in double, read from the raw arrays.
std::vector<double> decoded(const kc::codecs::sparse_codes& c, index_t layer, index_t head, index_t slot, entry_half half) {
  std::vector<double> out(static_cast<std::size_t>(c.head_dim), 0.0);
  const std::size_t code = static_cast<std::size_t>((((layer * c.kv_heads + head) * c.capacity + slot) * 2 + static_cast<index_t>(half)) * c.terms);
  const float* atoms = c.dictionaries + ((layer * c.kv_heads + head) * 2 + static_cast<index_t>(half)) * c.atoms * c.head_dim;
  for (index_t t = 0; t < c.terms; ++t) {
    const double w = kc::to_float(c.weights[code + static_cast<std::size_t>(t)]);
    for (index_t d = 0; d < c.head_dim; ++d) out[static_cast<std::size_t>(d)] += w * atoms[c.indices[code + static_cast<std::size_t>(t)] * c.head_dim + d];
  }
  return out;
}

/// Softmax attention in double over the decoded keys and values of a layer (zeros for an empty head).
std::vector<double> reference_attention(const kc::codecs::sparse_codes& c, index_t layer, const std::vector<float>& queries, index_t query_heads, double scale) {
  const index_t group = query_heads / c.kv_heads, dims = c.head_dim;
  std::vector<double> out(static_cast<std::size_t>(query_heads * dims), 0.0);
  for (index_t g = 0; g < query_heads; ++g) {
    const index_t h = g / group, length = c.lengths[layer * c.kv_heads + h];
    std::vector<double> logits;
    double top = -INFINITY, sum = 0.0;
    for (index_t j = 0; j < length; ++j) {
      const auto key = decoded(c, layer, h, j, entry_half::key);
      double dot = 0.0;
      for (index_t d = 0; d < dims; ++d) dot += queries[static_cast<std::size_t>(g * dims + d)] * key[static_cast<std::size_t>(d)];
      logits.push_back(dot * scale);
      top = std::max(top, logits.back());
    }
    for (double& x : logits) sum += (x = std::exp(x - top));
    for (index_t j = 0; j < length; ++j) {
      const auto value = decoded(c, layer, h, j, entry_half::value);
      for (index_t d = 0; d < dims; ++d) out[static_cast<std::size_t>(g * dims + d)] += logits[static_cast<std::size_t>(j)] / sum * value[static_cast<std::size_t>(d)];
    }
  }
  return out;
}

/// Runs the GPU attention of every layer and compares it with the reference.
void check_layers(const kc::codecs::sparse_codes& host, index_t group, std::uint32_t seed, const std::vector<float>* cpu_outputs = nullptr) {
  device_codes device(host);
  kvtest::device_array<std::byte> workspace(kc::cuda::sparse_attention::workspace_bytes());
  kc::cuda::sparse_attention attention(device.view, workspace.bytes());
  const index_t query_heads = host.kv_heads * group, dims = host.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dims));
  std::mt19937 rng(seed);
  for (index_t l = 0; l < host.layers; ++l) {
    const auto queries = kvtest::random_vector(query_heads * dims, 1.0, rng);
    kvtest::device_array<float> q(queries), out(queries.size());
    attention.attend(l, q.data(), query_heads, static_cast<float>(scale), out.data());
    attention.check();
    const auto got = out.download();
    const auto expected = reference_attention(host, l, queries, query_heads, scale);
    for (std::size_t i = 0; i < got.size(); ++i)
      BOOST_TEST(kvtest::close(got[i], expected[i], 1e-4, 1e-4), "layer " << l << " element " << i << " head_dim " << dims << " terms " << host.terms);
    if (cpu_outputs) {
      const std::vector<float>& cpu = cpu_outputs[l];
      for (std::size_t i = 0; i < got.size(); ++i) BOOST_TEST(kvtest::close(got[i], cpu[i], 1e-4, 1e-5), "CPU, layer " << l << " element " << i);
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(attention_on_random_codes_matches_the_double_reference) {
  struct config {
    extents e;
    index_t group;
  };
  const config configs[] = {
      {{2, 2, 40, 4, 64, 64}, 1},   {{1, 2, 70, 8, 128, 256}, 4}, {{2, 1, 33, 3, 96, 40}, 2},
      {{1, 3, 50, 1, 32, 100}, 3},  {{1, 2, 20, 2, 64, 8}, 2},  // 8 atoms: nearly every code repeats an atom
  };
  std::uint32_t seed = 100;
  for (const config& c : configs) {
    const host_codes host = random_codes(c.e, seed++);
    check_layers(host.view, c.group, seed++);
  }
}

BOOST_AUTO_TEST_CASE(codes_of_a_sparse_cache_attend_as_on_the_cpu) {
  constexpr index_t L = 2, H = 2, G = 2, D = 64, N = 48, S = 4, T = 29, CAP = 32;
  auto set = kc::codecs::dictionary_set::zeros("test-model", L, H, D, N);
  const host_codes atoms = random_codes({L, H, 1, 1, D, N}, 7);
  set.data = atoms.dictionaries;
  kc::codecs::sparse_cache cache(set, L, H, D, CAP, S);
  std::mt19937 rng(8);
  for (index_t t = 0; t < T; ++t)
    for (index_t l = 0; l < L; ++l) {
      const auto k = kvtest::random_vector(H * D, 1.0, rng), v = kvtest::random_vector(H * D, 1.0, rng);
      cache.append(l, k.data(), v.data(), t);
    }
  std::mt19937 queries_rng(9);  // the same queries as check_layers draws
  std::vector<float> cpu[L];
  for (index_t l = 0; l < L; ++l) {
    const auto q = kvtest::random_vector(H * G * D, 1.0, queries_rng);
    cpu[l].resize(q.size());
    cache.attend(l, q.data(), H * G, static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), cpu[l].data());
  }
  check_layers(cache.codes(), G, 9, cpu);
}

BOOST_AUTO_TEST_CASE(bad_arguments_and_bad_codes_are_named) {
  const extents e{2, 2, 16, 2, 32, 24};
  host_codes host = random_codes(e, 3);
  kvtest::device_array<std::byte> workspace(kc::cuda::sparse_attention::workspace_bytes());
  {
    device_codes device(host.view);
    kc::codecs::sparse_codes view = device.view;
    view.atoms = kc::cuda::sparse_attention::max_atoms + 1;
    kvtest::expect_error([&] { (void)kc::cuda::sparse_attention(view, workspace.bytes()); }, "codes.atoms");
    view = device.view;
    view.head_dim = 0;
    kvtest::expect_error([&] { (void)kc::cuda::sparse_attention(view, workspace.bytes()); }, "codes.head_dim");
    view = device.view;
    view.lengths = nullptr;
    kvtest::expect_error([&] { (void)kc::cuda::sparse_attention(view, workspace.bytes()); }, "codes.indices");
    kvtest::expect_error([&] { (void)kc::cuda::sparse_attention(device.view, workspace.bytes().first(1)); }, "workspace");
    kc::cuda::sparse_attention attention(device.view, workspace.bytes());
    kvtest::device_array<float> q(static_cast<std::size_t>(4 * e.head_dim)), out(q.size());
    kvtest::expect_error([&] { attention.attend(2, q.data(), 4, 1.0f, out.data()); }, "layer");
    kvtest::expect_error([&] { attention.attend(0, q.data(), 3, 1.0f, out.data()); }, "query_heads");
    kvtest::expect_error([&] { attention.attend(0, nullptr, 4, 1.0f, out.data()); }, "queries");
    kvtest::expect_error([&] { attention.attend(0, q.data(), 4, 1.0f, nullptr); }, "output");
  }
  // Atom indices outside the dictionary in layer 1, head 1 (full): each case names the first bad slot
  // over keys and values, leaves that head's output unwritten and still writes head 0's.
  host.lengths[3] = static_cast<std::int32_t>(e.capacity);
  struct bad_atom {
    index_t slot;
    entry_half half;
    index_t term;
    std::uint16_t atom;
  };
  const std::vector<std::pair<std::vector<bad_atom>, index_t>> cases{
      {{{5, entry_half::value, 1, static_cast<std::uint16_t>(e.atoms)}}, 5},
      {{{3, entry_half::key, 0, static_cast<std::uint16_t>(e.atoms)}}, 3},
      {{{2, entry_half::key, 1, 0xFFFF}}, 2},  // far outside the kernel's shared memory
      {{{9, entry_half::key, 0, static_cast<std::uint16_t>(e.atoms + 3)}, {5, entry_half::value, 0, static_cast<std::uint16_t>(e.atoms)}}, 5},
      {{{4, entry_half::key, 1, static_cast<std::uint16_t>(e.atoms)}, {11, entry_half::value, 1, static_cast<std::uint16_t>(e.atoms)}}, 4}};
  const float unwritten = 7.0f;
  for (const auto& [bad, first] : cases) {
    host_codes broken = host;
    for (const bad_atom& b : bad) broken.indices[host.view.code_offset(1, 1, b.slot, b.half) + static_cast<std::size_t>(b.term)] = b.atom;
    broken.view.indices = broken.indices.data();
    device_codes device(broken.view);
    kc::cuda::sparse_attention attention(device.view, workspace.bytes());
    kvtest::device_array<float> q(std::vector<float>(static_cast<std::size_t>(2 * e.head_dim), 0.5f));
    kvtest::device_array<float> out(std::vector<float>(q.size(), unwritten));
    attention.attend(0, q.data(), 2, 1.0f, out.data());
    attention.check();  // layer 0 is sound
    out.upload(std::vector<float>(q.size(), unwritten));
    attention.attend(1, q.data(), 2, 1.0f, out.data());
    kvtest::expect_error([&] { attention.check(); }, "codes.indices", "slot " + std::to_string(first));
    attention.check();  // cleared
    const auto written = out.download();
    for (index_t c = 0; c < e.head_dim; ++c) {
      BOOST_TEST(written[static_cast<std::size_t>(c)] != unwritten, "head 0 element " << c << ", first bad slot " << first);
      BOOST_TEST(written[static_cast<std::size_t>(e.head_dim + c)] == unwritten, "head 1 element " << c << ", first bad slot " << first);
    }
  }
  host.lengths[3] = static_cast<std::int32_t>(e.capacity + 1);
  {
    device_codes device(host.view);
    kc::cuda::sparse_attention attention(device.view, workspace.bytes());
    kvtest::device_array<float> q(static_cast<std::size_t>(2 * e.head_dim)), out(q.size());
    attention.attend(1, q.data(), 2, 1.0f, out.data());
    kvtest::expect_error([&] { attention.check(); }, "cache.lengths", std::to_string(e.capacity + 1));
  }
}

#include "support/gpu_main.hpp"
