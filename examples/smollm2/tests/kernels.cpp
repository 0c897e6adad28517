// SPDX-License-Identifier: Apache-2.0
// The engine's fp32 kernels against double-precision references on random shapes (fixed seeds, edge
// shapes included): ops::matmul (register-blocked dot products) and attend_causal (tiled causal
// attention with an online softmax; its weighted value sums in registers). Also the property the
// engine relies on for prefill/decode consistency: every matmul output has the same bits whatever
// the batch it is computed in.
#include "../kv_backend.hpp"
#include "../ops.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

namespace {

std::vector<float> random_floats(std::size_t n, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    std::vector<float> out(n);
    for (auto& x : out) x = normal(rng);
    return out;
}

/// Rounding bound of an fp32 dot product of length @p n summed in ops::lanes partial sums: each sum
/// sees about n / lanes additions, then the lanes are added; relative to the sum of |products|.
double dot_tolerance(std::size_t n, double abs_sum) {
    constexpr auto lanes = static_cast<double>(smollm2::ops::lanes);
    return (static_cast<double>(n) / lanes + lanes + 2) * 6e-8 * abs_sum + 1e-30;
}

}  // namespace

BOOST_AUTO_TEST_CASE(matmul_matches_double_precision_on_random_shapes) {
    std::mt19937 rng(20261201);
    const std::size_t cols_cases[] = {1, 7, 8, 13, 64, 70, 576};
    const std::size_t rows_cases[] = {1, 2, 3, 5, 16, 17, 35};
    const std::size_t token_cases[] = {1, 2, 3, 4, 5, 9, 13};
    for (std::size_t cols : cols_cases)
        for (std::size_t rows : rows_cases)
            for (std::size_t tokens : token_cases) {
                const auto w = random_floats(rows * cols, rng), x = random_floats(tokens * cols, rng);
                std::vector<float> y(tokens * rows);
                smollm2::ops::matmul(w.data(), rows, cols, x.data(), tokens, y.data());
                for (std::size_t t = 0; t < tokens; ++t)
                    for (std::size_t o = 0; o < rows; ++o) {
                        double exact = 0, abs_sum = 0;
                        for (std::size_t i = 0; i < cols; ++i) {
                            exact += static_cast<double>(w[o * cols + i]) * x[t * cols + i];
                            abs_sum += std::abs(static_cast<double>(w[o * cols + i]) * x[t * cols + i]);
                        }
                        BOOST_TEST_CONTEXT("rows " << rows << " cols " << cols << " tokens " << tokens << " at (" << t << ", " << o << ")")
                        BOOST_TEST(std::abs(y[t * rows + o] - exact) <= dot_tolerance(cols, abs_sum));
                    }
            }
}

BOOST_AUTO_TEST_CASE(matmul_output_bits_do_not_depend_on_the_batch) {
    // A prefill (all tokens at once) and a decode (one token per call) must give the same bits, and
    // ops::dot() the same as either: every block shape of dot_tile sums in the same order.
    std::mt19937 rng(7);
    const std::size_t cols_cases[] = {13, 64, 576};
    for (std::size_t cols : cols_cases) {
        const std::size_t rows = 37, tokens = 11;
        const auto w = random_floats(rows * cols, rng), x = random_floats(tokens * cols, rng);
        std::vector<float> batch(tokens * rows), one(rows);
        smollm2::ops::matmul(w.data(), rows, cols, x.data(), tokens, batch.data());
        for (std::size_t t = 0; t < tokens; ++t) {
            smollm2::ops::matmul(w.data(), rows, cols, x.data() + t * cols, 1, one.data());
            for (std::size_t o = 0; o < rows; ++o) {
                const float single = smollm2::ops::dot(w.data() + o * cols, x.data() + t * cols, cols);
                BOOST_TEST_CONTEXT("cols " << cols << " token " << t << " row " << o) {
                    BOOST_TEST(std::memcmp(&batch[t * rows + o], &one[o], sizeof(float)) == 0);
                    BOOST_TEST(std::memcmp(&batch[t * rows + o], &single, sizeof(float)) == 0);
                }
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(attend_causal_matches_double_precision_on_random_shapes) {
    // Slots in shuffled position order (as after compression), a chunk starting after earlier tokens
    // (first > 0), GQA groups, head dims with and without a partial value block.
    std::mt19937 rng(11);
    struct shape {
        int kv_heads, group, head_dim, cached, tokens;
    };
    const shape shapes[] = {{1, 1, 8, 0, 1}, {3, 3, 64, 0, 100}, {2, 2, 40, 37, 17}, {1, 4, 100, 5, 70}, {3, 3, 64, 130, 33}};
    for (const auto& s : shapes) {
        const int layers = 2, layer = 1, n_heads = s.kv_heads * s.group, slots = s.cached + s.tokens;
        smollm2::kv_cache_storage cache(layers, s.kv_heads, slots, s.head_dim);
        cache.k = random_floats(cache.k.size(), rng);
        cache.v = random_floats(cache.v.size(), rng);
        for (int h = 0; h < s.kv_heads; ++h) {
            std::vector<std::int32_t> order(static_cast<std::size_t>(slots));
            std::iota(order.begin(), order.end(), 0);
            std::shuffle(order.begin(), order.end(), rng);
            cache.lengths[cache.head_index(layer, h)] = slots;
            for (int i = 0; i < slots; ++i) cache.positions[cache.slot_index(layer, h, i)] = order[static_cast<std::size_t>(i)];
        }
        const auto d = static_cast<std::size_t>(s.head_dim), width = static_cast<std::size_t>(n_heads) * d;
        const auto q = random_floats(static_cast<std::size_t>(s.tokens) * width, rng);
        std::vector<float> out(q.size());
        const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
        smollm2::attend_causal(cache, layer, n_heads, q.data(), static_cast<std::size_t>(s.tokens), s.cached, scale, out.data());
        for (int t = 0; t < s.tokens; ++t)
            for (int qh = 0; qh < n_heads; ++qh) {
                const int h = qh / s.group, position = s.cached + t;
                const float* query = &q[static_cast<std::size_t>(t) * width + static_cast<std::size_t>(qh) * d];
                std::vector<double> logits;
                std::vector<int> seen;
                for (int i = 0; i < slots; ++i) {
                    if (cache.positions[cache.slot_index(layer, h, i)] > position) continue;
                    double dot = 0;
                    for (std::size_t j = 0; j < d; ++j) dot += static_cast<double>(query[j]) * cache.key(layer, h, i)[j];
                    logits.push_back(dot * scale);
                    seen.push_back(i);
                }
                const double top = *std::max_element(logits.begin(), logits.end());
                double total = 0;
                for (double& l : logits) total += (l = std::exp(l - top));
                for (std::size_t j = 0; j < d; ++j) {
                    double exact = 0;
                    for (std::size_t k = 0; k < seen.size(); ++k) exact += logits[k] / total * cache.value(layer, h, seen[k])[j];
                    const float got = out[static_cast<std::size_t>(t) * width + static_cast<std::size_t>(qh) * d + j];
                    BOOST_TEST_CONTEXT("shape " << s.kv_heads << "x" << s.group << " dim " << s.head_dim << " cached " << s.cached
                                                << " token " << t << " head " << qh << " dim " << j)
                    BOOST_TEST(std::abs(got - exact) <= 2e-5 * (1 + std::abs(exact)));
                }
            }
    }
}
