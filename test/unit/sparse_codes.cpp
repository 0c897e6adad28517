// SPDX-License-Identifier: Apache-2.0
// CSR (docs/methods.md 13): matching pursuit against a plain double-precision reference, attention on
// the codes against softmax attention in double over the vectors the codes stand for, the dictionary
// fit on vectors built from a hidden dictionary, the dictionary file, eviction with the encoded cache
// (a policy's keep-set through cpu::session then encode(): exactly the kept entries, each once, with
// the codes matching pursuit gives their rows; compact(): kept codes and positions bit-identical, in
// slot order), and bad input named in kvcompact::error (a dictionary of the wrong head_dim, for
// another model, not unit-norm; a cache of another shape; a keep-set of the wrong size).
#include "support/expect_error.hpp"
#include "support/reference.hpp"

#include <kvcompact/calibration/dictionary_learning.hpp>
#include <kvcompact/codecs/sparse_cache.hpp>
#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <set>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

std::vector<float> random_atoms(index_t count, index_t dim, std::mt19937& rng) {
  std::vector<float> atoms = kvtest::random_vector(count * dim, 1.0, rng);
  for (index_t k = 0; k < count; ++k) {
    double norm = 0.0;
    for (index_t d = 0; d < dim; ++d) norm += static_cast<double>(atoms[static_cast<std::size_t>(k * dim + d)]) * atoms[static_cast<std::size_t>(k * dim + d)];
    for (index_t d = 0; d < dim; ++d) atoms[static_cast<std::size_t>(k * dim + d)] = static_cast<float>(atoms[static_cast<std::size_t>(k * dim + d)] / std::sqrt(norm));
  }
  return atoms;
}

// Matching pursuit in double: (atom, weight) per iteration, the smallest gap between the best and the
// second-best |projection| seen (how far fp32 is from choosing another atom).
struct reference_code {
  std::vector<std::pair<index_t, double>> steps;
  double gap = INFINITY;
};
reference_code reference_pursuit(const float* x, const std::vector<float>& atoms, index_t count, index_t dim, index_t terms) {
  std::vector<double> r(x, x + dim);
  reference_code out;
  for (index_t t = 0; t < terms; ++t) {
    index_t best = 0;
    double best_dot = 0.0, best_abs = -1.0, second = -1.0;
    for (index_t k = 0; k < count; ++k) {
      double dot = 0.0;
      for (index_t d = 0; d < dim; ++d) dot += r[static_cast<std::size_t>(d)] * atoms[static_cast<std::size_t>(k * dim + d)];
      if (std::abs(dot) > best_abs) second = best_abs, best = k, best_dot = dot, best_abs = std::abs(dot);
      else second = std::max(second, std::abs(dot));
    }
    out.gap = std::min(out.gap, best_abs - second);
    for (index_t d = 0; d < dim; ++d) r[static_cast<std::size_t>(d)] -= best_dot * atoms[static_cast<std::size_t>(best * dim + d)];
    out.steps.emplace_back(best, best_dot);
  }
  return out;
}

kc::codecs::dictionary_set random_set(std::string model, index_t layers, index_t heads, index_t dim, index_t atoms, std::uint32_t seed) {
  auto set = kc::codecs::dictionary_set::zeros(std::move(model), layers, heads, dim, atoms);
  std::mt19937 rng(seed);
  set.data = random_atoms(layers * heads * 2 * atoms, dim, rng);
  return set;
}

}  // namespace

BOOST_AUTO_TEST_CASE(matching_pursuit_matches_the_double_reference) {
  constexpr index_t N = 40, D = 16, S = 5;
  std::mt19937 rng(7);
  const auto atoms = random_atoms(N, D, rng);
  index_t compared = 0;
  for (int v = 0; v < 60; ++v) {
    const auto x = kvtest::random_vector(D, 1.0, rng);
    std::vector<float> residual(D), weights(S);
    std::vector<std::uint16_t> indices(S);
    const index_t used = kc::codecs::matching_pursuit(x.data(), atoms.data(), N, D, S, residual.data(), indices.data(), weights.data());
    const reference_code ref = reference_pursuit(x.data(), atoms, N, D, S);
    if (ref.gap < 1e-4) continue;  // fp32 may pick the other atom of a near tie
    ++compared;
    std::vector<std::pair<index_t, double>> merged;  // the reference's steps, repeated atoms summed, in first-use order
    for (const auto& [k, w] : ref.steps) {
      auto it = std::find_if(merged.begin(), merged.end(), [&](const auto& e) { return e.first == k; });
      if (it == merged.end()) merged.emplace_back(k, w);
      else it->second += w;
    }
    BOOST_TEST(used == static_cast<index_t>(merged.size()));
    for (index_t t = 0; t < used && t < static_cast<index_t>(merged.size()); ++t) {
      BOOST_TEST(indices[static_cast<std::size_t>(t)] == merged[static_cast<std::size_t>(t)].first);
      BOOST_TEST(kvtest::close(weights[static_cast<std::size_t>(t)], merged[static_cast<std::size_t>(t)].second, 1e-4, 1e-5));
    }
    for (index_t t = used; t < S; ++t) BOOST_TEST((indices[static_cast<std::size_t>(t)] == 0 && weights[static_cast<std::size_t>(t)] == 0.0f));
    for (index_t d = 0; d < D; ++d) {  // the residual is what the code leaves of x
      double rebuilt = x[static_cast<std::size_t>(d)];
      for (index_t t = 0; t < used; ++t) rebuilt -= static_cast<double>(weights[static_cast<std::size_t>(t)]) * atoms[static_cast<std::size_t>(indices[static_cast<std::size_t>(t)] * D + d)];
      BOOST_TEST(kvtest::close(residual[static_cast<std::size_t>(d)], rebuilt, 1e-4, 1e-5));
    }
  }
  BOOST_TEST(compared > 40);
  // an orthonormal basis codes a vector with as many terms as it has non-zeros exactly
  std::vector<float> basis(D * D, 0.0f);
  for (index_t d = 0; d < D; ++d) basis[static_cast<std::size_t>(d * D + d)] = 1.0f;
  std::vector<float> x(D, 0.0f), residual(D), weights(3);
  std::vector<std::uint16_t> indices(3);
  x[2] = 0.5f, x[9] = -2.0f, x[15] = 1.25f;
  kc::codecs::matching_pursuit(x.data(), basis.data(), D, D, 3, residual.data(), indices.data(), weights.data());
  BOOST_TEST((indices[0] == 9 && indices[1] == 15 && indices[2] == 2));
  BOOST_TEST((weights[0] == -2.0f && weights[1] == 1.25f && weights[2] == 0.5f));
}

BOOST_AUTO_TEST_CASE(attention_on_codes_matches_dense_attention_over_the_decoded_entries) {
  constexpr index_t L = 2, H = 2, G = 3, D = 16, N = 48, S = 4, T = 37;
  const auto set = random_set("test-model", L, H, D, N, 11);
  kc::codecs::sparse_cache cache(set, L, H, D, 64, S, "test-model");
  std::mt19937 rng(12);
  for (index_t t = 0; t < T; ++t)
    for (index_t l = 0; l < L; ++l) {
      const auto k = kvtest::random_vector(H * D, 1.0, rng), v = kvtest::random_vector(H * D, 1.0, rng);
      cache.append(l, k.data(), v.data(), t);
      if (t != T - 1) continue;
      std::vector<float> decoded(D);  // the last key decodes to the double reference's code, weights rounded to fp16
      cache.decode(l, 1, T - 1, kc::codecs::entry_half::key, decoded.data());
      const reference_code ref = reference_pursuit(k.data() + D, std::vector<float>(set.atoms_of(l, 1, kc::codecs::entry_half::key),
                                                                                     set.atoms_of(l, 1, kc::codecs::entry_half::key) + N * D), N, D, S);
      for (index_t d = 0; d < D; ++d) {
        double expected = 0.0;
        for (const auto& [a, w] : ref.steps) expected += w * set.atoms_of(l, 1, kc::codecs::entry_half::key)[a * D + d];
        BOOST_TEST(kvtest::close(decoded[static_cast<std::size_t>(d)], expected, 2e-3, 2e-3));
      }
    }
  BOOST_TEST(cache.length(1, 1) == T);
  BOOST_TEST(cache.position(1, 1, 5) == 5);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (index_t l = 0; l < L; ++l) {
    const auto q = kvtest::random_vector(H * G * D, 1.0, rng);
    std::vector<float> out(static_cast<std::size_t>(H * G * D));
    cache.attend(l, q.data(), H * G, static_cast<float>(scale), out.data());
    for (index_t g = 0; g < H * G; ++g) {
      const index_t h = g / G;
      std::vector<std::vector<float>> keys(T, std::vector<float>(D)), values(T, std::vector<float>(D));
      std::vector<double> logit(T);
      double top = -INFINITY, sum = 0.0;
      for (index_t j = 0; j < T; ++j) {
        cache.decode(l, h, j, kc::codecs::entry_half::key, keys[static_cast<std::size_t>(j)].data());
        cache.decode(l, h, j, kc::codecs::entry_half::value, values[static_cast<std::size_t>(j)].data());
        double dot = 0.0;
        for (index_t d = 0; d < D; ++d) dot += static_cast<double>(q[static_cast<std::size_t>(g * D + d)]) * keys[static_cast<std::size_t>(j)][static_cast<std::size_t>(d)];
        logit[static_cast<std::size_t>(j)] = dot * scale;
        top = std::max(top, logit[static_cast<std::size_t>(j)]);
      }
      for (double& x : logit) sum += (x = std::exp(x - top));
      for (index_t d = 0; d < D; ++d) {
        double expected = 0.0;
        for (index_t j = 0; j < T; ++j) expected += logit[static_cast<std::size_t>(j)] / sum * values[static_cast<std::size_t>(j)][static_cast<std::size_t>(d)];
        BOOST_TEST(kvtest::close(out[static_cast<std::size_t>(g * D + d)], expected, 1e-4, 1e-5), "layer " << l << " query head " << g << " dim " << d);
      }
    }
  }
  BOOST_TEST(cache.stored_bits_per_element() == 8.0);                         // 4 x (16 + 16) / 16
  BOOST_TEST(cache.packed_bits_per_element() == 4.0 * (6.0 + 16.0) / 16.0);  // N = 48: 6-bit indices
}

BOOST_AUTO_TEST_CASE(the_fit_recovers_vectors_built_from_a_hidden_dictionary) {
  constexpr index_t N = 24, D = 12, S = 2, COUNT = 800;
  std::mt19937 rng(21);
  const auto hidden = random_atoms(N, D, rng);
  std::vector<float> samples(static_cast<std::size_t>(COUNT * D), 0.0f);
  for (index_t i = 0; i < COUNT; ++i)
    for (index_t t = 0; t < S; ++t) {
      const index_t a = kvtest::uniform_int(rng, 0, N - 1);
      const double w = (0.5 + 0.5 * (kvtest::uniform_pm1(rng) + 1.0)) * (rng() % 2 ? 1.0 : -1.0);
      for (index_t d = 0; d < D; ++d) samples[static_cast<std::size_t>(i * D + d)] += static_cast<float>(w * hidden[static_cast<std::size_t>(a * D + d)]);
    }
  const auto fit = kc::calibration::learn_dictionary(samples, D, N, S, 25, 22);
  BOOST_TEST_MESSAGE("relative error: first " << fit.error.front() << ", last " << fit.error.back());
  BOOST_TEST(fit.error.size() == 26u);
  BOOST_TEST(fit.error.back() < 0.3 * fit.error.front());  // 0.27 -> 0.06 with this seed (plain pursuit on a coherent dictionary)
  BOOST_TEST(fit.error.back() < 0.1);
  for (index_t k = 0; k < N; ++k) {
    double norm = 0.0;
    for (index_t d = 0; d < D; ++d) norm += static_cast<double>(fit.atoms[static_cast<std::size_t>(k * D + d)]) * fit.atoms[static_cast<std::size_t>(k * D + d)];
    BOOST_TEST(std::abs(norm - 1.0) < 1e-5);
  }
}

BOOST_AUTO_TEST_CASE(dictionary_files_round_trip_and_bad_dictionaries_are_named) {
  const auto set = random_set("smollm2 fnv1a64:0", 2, 3, 8, 16, 31);
  const auto path = (std::filesystem::temp_directory_path() / "kvcompact_sparse_codes_test.dict").string();
  set.save(path);
  const auto loaded = kc::codecs::dictionary_set::load(path);
  BOOST_TEST((loaded.model == set.model && loaded.layers == 2 && loaded.kv_heads == 3 && loaded.head_dim == 8 && loaded.atoms == 16));
  BOOST_TEST((loaded.data == set.data));
  kvtest::expect_error([&] { kc::codecs::sparse_cache(loaded, 2, 3, 64, 16, 2); }, "dictionary", "head_dim 8");
  kvtest::expect_error([&] { kc::codecs::sparse_cache(loaded, 4, 3, 8, 16, 2); }, "dictionary", "layers");
  kvtest::expect_error([&] { kc::codecs::sparse_cache(loaded, 2, 3, 8, 16, 2, "another-model"); }, "dictionary", "another-model");
  auto scaled = loaded;
  scaled.data[3] *= 2.0f;
  kvtest::expect_error([&] { kc::codecs::sparse_cache(scaled, 2, 3, 8, 16, 2); }, "dictionary", "unit-norm");
  kvtest::expect_error([&] { kc::codecs::sparse_cache(loaded, 2, 3, 8, 16, 0); }, "terms");
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    std::fputs("kvcompact-layer-budgets 1\n", f);
    std::fclose(f);
  }
  kvtest::expect_error([&] { (void)kc::codecs::dictionary_set::load(path); }, "path", "not a kvcompact sparse dictionary");
  std::filesystem::remove(path);
  const std::vector<float> few(5 * 8, 1.0f);
  kvtest::expect_error([&] { (void)kc::calibration::learn_dictionary(few, 8, 6, 2, 1, 0); }, "atoms");
}

namespace {

// The code matching pursuit gives a vector (the library's encoder, called directly): what an entry
// encoded from that vector must hold, bit for bit.
struct entry_code {
  std::vector<std::uint16_t> indices;
  std::vector<std::uint16_t> weight_bits;
};
entry_code code_of(const std::vector<float>& x, const kc::codecs::dictionary_set& set, index_t layer, index_t head, kc::codecs::entry_half half, index_t terms) {
  entry_code c{std::vector<std::uint16_t>(static_cast<std::size_t>(terms)), {}};
  std::vector<float> residual(x.size()), weights(static_cast<std::size_t>(terms));
  kc::codecs::matching_pursuit(x.data(), set.atoms_of(layer, head, half), set.atoms, set.head_dim, terms, residual.data(), c.indices.data(), weights.data());
  for (float w : weights) c.weight_bits.push_back(kc::from_float<kc::half_t>(w).bits);
  return c;
}
// The code a sparse cache stores for a slot.
entry_code stored_code(const kc::codecs::sparse_cache& cache, index_t layer, index_t head, index_t slot, kc::codecs::entry_half half) {
  const kc::codecs::sparse_codes view = cache.codes();
  const std::size_t at = view.code_offset(layer, head, slot, half);
  entry_code c;
  for (index_t t = 0; t < view.terms; ++t) {
    c.indices.push_back(view.indices[at + static_cast<std::size_t>(t)]);
    c.weight_bits.push_back(view.weights[at + static_cast<std::size_t>(t)].bits);
  }
  return c;
}

}  // namespace

BOOST_AUTO_TEST_CASE(encoding_a_compressed_cache_encodes_exactly_the_entries_the_policy_kept) {
  constexpr index_t L = 2, H = 2, G = 2, D = 16, N = 32, S = 3, CAP = 48, PROMPT = 40, WINDOW = 6, BUDGET = 14;
  auto cache = kvtest::make_random_cache<kc::half_t>({1, L, H, CAP, D}, {PROMPT, PROMPT}, 61);
  const auto full = cache;  // positions 0..PROMPT-1: slot p holds position p
  const auto window = kvtest::make_random_window(1, L, H * G, WINDOW, D, {PROMPT - 1}, 1.0, 62);
  const auto policy = kc::policies::snapkv(BUDGET, WINDOW);
  using session_type = kc::cpu::session<decltype(policy), kc::half_t, kc::layouts::strided>;
  const kc::attention_shape shape{H * G};
  std::vector<std::byte> state(session_type::state_bytes(cache.layout)), workspace(session_type::workspace_bytes(cache.layout, shape));
  session_type session(policy, cache.view(), shape, state, workspace);
  session.compress_prefill(window.view());
  const auto set = random_set("test-model", L, H, D, N, 63);
  kc::codecs::sparse_cache sparse(set, L, H, D, CAP, S);
  const std::vector<float> filler(static_cast<std::size_t>(H * D), 0.5f);
  sparse.append(0, filler.data(), filler.data(), 99);  // replaced by encode()
  sparse.encode(cache.view(), 0);
  const auto row = [&](const std::vector<kc::half_t>& data, index_t l, index_t h, index_t p) {
    std::vector<float> x(static_cast<std::size_t>(D));
    for (index_t d = 0; d < D; ++d) x[static_cast<std::size_t>(d)] = kc::to_float(data[static_cast<std::size_t>(full.element(0, l, h, p, d))]);
    return x;
  };
  for (index_t l = 0; l < L; ++l)
    for (index_t h = 0; h < H; ++h) {
      BOOST_TEST_REQUIRE(sparse.length(l, h) == BUDGET);
      std::set<index_t> seen;
      for (index_t j = 0; j < BUDGET; ++j) {
        const index_t p = sparse.position(l, h, j);
        BOOST_TEST(p == cache.position(0, l, h, j));  // the policy's kept slots, in its slot order
        BOOST_TEST(seen.insert(p).second, "position " << p << " encoded twice");
        BOOST_TEST((stored_code(sparse, l, h, j, kc::codecs::entry_half::key).indices ==
                    code_of(row(full.keys, l, h, p), set, l, h, kc::codecs::entry_half::key, S).indices));
        BOOST_TEST((stored_code(sparse, l, h, j, kc::codecs::entry_half::key).weight_bits ==
                    code_of(row(full.keys, l, h, p), set, l, h, kc::codecs::entry_half::key, S).weight_bits));
        BOOST_TEST((stored_code(sparse, l, h, j, kc::codecs::entry_half::value).indices ==
                    code_of(row(full.values, l, h, p), set, l, h, kc::codecs::entry_half::value, S).indices));
        BOOST_TEST((stored_code(sparse, l, h, j, kc::codecs::entry_half::value).weight_bits ==
                    code_of(row(full.values, l, h, p), set, l, h, kc::codecs::entry_half::value, S).weight_bits));
      }
      for (index_t p = PROMPT - WINDOW; p < PROMPT; ++p) BOOST_TEST(seen.count(p) == 1, "window position " << p << " lost");  // SnapKV keeps its window
    }
  // Bad input is named; a refused encode leaves the cache as it was.
  kc::codecs::sparse_cache small(set, L, H, D, BUDGET - 1, S);
  kvtest::expect_error([&] { small.encode(cache.view(), 0); }, "cache.lengths");
  kvtest::expect_error([&] { sparse.encode(cache.view(), 1); }, "sequence");
  auto other = kvtest::make_random_cache<float>({1, L, H, CAP, 2 * D}, {4, 4}, 64);
  kvtest::expect_error([&] { sparse.encode(other.view(), 0); }, "cache", "head_dim");
  BOOST_TEST(sparse.length(1, 1) == BUDGET);
}

BOOST_AUTO_TEST_CASE(compaction_keeps_the_flagged_codes_bit_identical_in_slot_order) {
  constexpr index_t L = 2, H = 3, D = 16, N = 40, S = 4, CAP = 30, T = 25;
  const auto set = random_set("test-model", L, H, D, N, 71);
  kc::codecs::sparse_cache cache(set, L, H, D, CAP, S);
  std::mt19937 rng(72);
  for (index_t t = 0; t < T; ++t)
    for (index_t l = 0; l < L; ++l) {
      const auto k = kvtest::random_vector(H * D, 1.0, rng), v = kvtest::random_vector(H * D, 1.0, rng);
      cache.append(l, k.data(), v.data(), 100 + t);
    }
  struct entry {
    entry_code key, value;
    index_t position;
  };
  const auto entry_at = [&](index_t l, index_t h, index_t j) {
    return entry{stored_code(cache, l, h, j, kc::codecs::entry_half::key), stored_code(cache, l, h, j, kc::codecs::entry_half::value), cache.position(l, h, j)};
  };
  std::vector<std::vector<entry>> before;
  for (index_t l = 0; l < L; ++l)
    for (index_t h = 0; h < H; ++h) {
      before.emplace_back();
      for (index_t j = 0; j < T; ++j) before.back().push_back(entry_at(l, h, j));
    }
  std::bernoulli_distribution coin(0.4);
  for (index_t l = 0; l < L; ++l)
    for (index_t h = 0; h < H; ++h) {
      std::vector<std::uint8_t> keep(static_cast<std::size_t>(T));
      for (auto& k : keep) k = coin(rng) ? 1 : 0;
      if (l == 0 && h == 0) std::fill(keep.begin(), keep.end(), std::uint8_t{1});  // keeps everything
      if (l == 1 && h == 2) std::fill(keep.begin(), keep.end(), std::uint8_t{0});  // keeps nothing
      if (l == 1 && h == 0) keep.assign(keep.size(), 0), keep[T - 1] = 7;  // only the last (any nonzero flag keeps)
      std::vector<index_t> kept;
      for (index_t j = 0; j < T; ++j)
        if (keep[static_cast<std::size_t>(j)]) kept.push_back(j);
      BOOST_TEST(cache.compact(l, h, keep) == static_cast<index_t>(kept.size()));
      BOOST_TEST_REQUIRE(cache.length(l, h) == static_cast<index_t>(kept.size()));
      const auto& old = before[static_cast<std::size_t>(l * H + h)];
      for (std::size_t i = 0; i < kept.size(); ++i) {
        const entry now = entry_at(l, h, static_cast<index_t>(i)), & was = old[static_cast<std::size_t>(kept[i])];
        BOOST_TEST(now.position == was.position, "layer " << l << " head " << h << " slot " << i);
        BOOST_TEST((now.key.indices == was.key.indices && now.key.weight_bits == was.key.weight_bits));
        BOOST_TEST((now.value.indices == was.value.indices && now.value.weight_bits == was.value.weight_bits));
      }
    }
  BOOST_TEST(cache.length(1, 2) == 0);
  // Heads of a layer now differ in length: an append that one full head refuses stores nothing.
  const auto k = kvtest::random_vector(H * D, 1.0, rng);
  for (index_t t = T; t < CAP; ++t) cache.append(0, k.data(), k.data(), 100 + t);
  std::vector<index_t> lengths;
  for (index_t h = 0; h < H; ++h) lengths.push_back(cache.length(0, h));
  BOOST_TEST(lengths[0] == CAP);
  kvtest::expect_error([&] { cache.append(0, k.data(), k.data(), 200); }, "cache", "head 0 of layer 0 is full");
  for (index_t h = 0; h < H; ++h) BOOST_TEST(cache.length(0, h) == lengths[static_cast<std::size_t>(h)]);
  kvtest::expect_error([&] { cache.compact(0, 0, std::vector<std::uint8_t>(3)); }, "keep");
  kvtest::expect_error([&] { cache.compact(2, 0, {}); }, "layer");
  kvtest::expect_error([&] { cache.compact(0, 3, {}); }, "head");
}
