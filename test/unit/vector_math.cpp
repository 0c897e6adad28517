// SPDX-License-Identifier: Apache-2.0
// The CPU backend's register-held lane sums (kvcompact/cpu/detail/vector_math.hpp), for the vector
// width this file is compiled for (test_vector_math: the build's flags; test_vector_math_native, where
// the compiler takes -march=native: the machine's own width):
//  - sum_lanes() of native-vector lanes gives the bits of detail::sum_lanes() of the same lanes as
//    an array (the one association both backends use), on random lanes of mixed magnitudes;
//  - dot_rows() for 1-4 query rows against a double-precision reference, for counts with and without
//    a partial last group of lanes; it reads no element at or beyond count (NaN there never shows);
//  - dot_rows() continues the sums it is given: two calls over halves split at a multiple of the lane
//    count give the bits of one call over the whole (how row chunks of long rows add up);
//  - weighted_rows() for 1-4 outputs against a double reference, on runs with and without zero
//    weights: a row whose weight is 0 never reaches an output, even when it holds NaN (a masked slot).
#include <kvcompact/cpu/detail/vector_math.hpp>

#include <boost/test/unit_test.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace {

namespace detail = kvcompact::detail;
using kvcompact::index_t;

// Lane l of `v` (lane_vectors holds lane l in part l / native_lanes, element l % native_lanes).
float lane(const detail::lane_vectors& v, int l) { return v.part[l / detail::native_lanes][l % detail::native_lanes]; }

// Random floats of mixed magnitudes (2^-20 .. 2^20, both signs), so that the order of additions shows in the bits.
std::vector<float> mixed_floats(std::mt19937& rng, std::size_t count) {
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-20, 20), sign(0, 1);
  std::vector<float> values(count);
  for (float& v : values) v = std::ldexp(mantissa(rng), exponent(rng)) * (sign(rng) ? -1.0f : 1.0f);
  return values;
}

// The dot products of ROWS query rows with one key over `count` dimensions, through dot_rows() and sum_lanes().
template <int ROWS>
std::vector<float> dot_products(const std::vector<std::vector<float>>& queries, const std::vector<float>& key, index_t count) {
  detail::lane_vectors sums[ROWS] = {};
  const float* rows[ROWS];
  for (int r = 0; r < ROWS; ++r) rows[r] = queries[r].data();
  detail::dot_rows<ROWS>(rows, key.data(), count, sums);
  std::vector<float> result;
  for (int r = 0; r < ROWS; ++r) result.push_back(detail::sum_lanes(sums[r]));
  return result;
}

template <int ROWS>
void check_dot_rows_against_double(std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const index_t count : {1, 5, 15, 16, 17, 40, 64, 100, 128}) {
    // A NaN just past `count` in every row: a read beyond the last element would show in the result.
    std::vector<float> key(count + 1);
    std::vector<std::vector<float>> queries(ROWS, std::vector<float>(count + 1));
    for (index_t d = 0; d < count; ++d) key[d] = normal(rng);
    for (auto& q : queries)
      for (index_t d = 0; d < count; ++d) q[d] = normal(rng);
    key[count] = std::numeric_limits<float>::quiet_NaN();
    for (auto& q : queries) q[count] = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> got = dot_products<ROWS>(queries, key, count);
    for (int r = 0; r < ROWS; ++r) {
      double exact = 0.0, magnitude = 0.0;
      for (index_t d = 0; d < count; ++d) {
        exact += static_cast<double>(queries[r][d]) * key[d];
        magnitude += std::abs(static_cast<double>(queries[r][d]) * key[d]);
      }
      BOOST_TEST_CONTEXT("rows " << ROWS << ", row " << r << ", count " << count) {
        BOOST_TEST(std::isfinite(got[r]));
        BOOST_TEST(std::abs(got[r] - exact) <= 2.0 * count * std::numeric_limits<float>::epsilon() * magnitude);
      }
    }
  }
}

template <int ROWS>
void check_split_sums(std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const index_t count = 8 * detail::simd_lanes + 5, split = 3 * detail::simd_lanes;
  std::vector<float> key(count);
  std::vector<std::vector<float>> queries(ROWS, std::vector<float>(count));
  for (float& k : key) k = normal(rng);
  for (auto& q : queries)
    for (float& x : q) x = normal(rng);
  detail::lane_vectors whole[ROWS] = {}, halves[ROWS] = {};
  const float *rows[ROWS], *second[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    rows[r] = queries[r].data();
    second[r] = queries[r].data() + split;
  }
  detail::dot_rows<ROWS>(rows, key.data(), count, whole);
  detail::dot_rows<ROWS>(rows, key.data(), split, halves);
  detail::dot_rows<ROWS>(second, key.data() + split, count - split, halves);
  for (int r = 0; r < ROWS; ++r)
    for (int l = 0; l < detail::simd_lanes; ++l)
      BOOST_TEST(std::bit_cast<std::uint32_t>(lane(whole[r], l)) == std::bit_cast<std::uint32_t>(lane(halves[r], l)), "rows " << ROWS << ", row " << r << ", lane " << l);
}

template <int ROWS>
void check_weighted_rows(std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const index_t width : {3, 16, 40, 128}) {
    const index_t count = 16;
    std::vector<std::vector<float>> values(count, std::vector<float>(width));
    for (auto& row : values)
      for (float& x : row) x = normal(rng);
    std::vector<std::vector<float>> weights(ROWS, std::vector<float>(count));
    for (auto& w : weights)
      for (float& x : w) x = std::abs(normal(rng)) + 0.01f;
    // The same run with row 5 weighing 0 for every output (and holding NaN, as a masked slot may)
    // and row 9 weighing 0 for output 0 only.
    std::vector<std::vector<float>> masked_values = values, masked_weights = weights;
    masked_values[5].assign(width, std::numeric_limits<float>::quiet_NaN());
    for (auto& w : masked_weights) w[5] = 0.0f;
    masked_weights[0][9] = 0.0f;
    auto run = [&](const std::vector<std::vector<float>>& rows_of, const std::vector<std::vector<float>>& weights_of) {
      std::vector<std::vector<float>> out(ROWS, std::vector<float>(width, 0.5f));
      float* outputs[ROWS];
      const float* weight_rows[ROWS];
      for (int r = 0; r < ROWS; ++r) {
        outputs[r] = out[r].data();
        weight_rows[r] = weights_of[r].data();
      }
      std::vector<const float*> rows;
      for (const auto& row : rows_of) rows.push_back(row.data());
      detail::weighted_rows<ROWS>(outputs, weight_rows, rows.data(), count, width);
      return out;
    };
    const auto plain = run(values, weights), masked = run(masked_values, masked_weights);
    for (int r = 0; r < ROWS; ++r)
      for (index_t i = 0; i < width; ++i) {
        double exact = 0.5, masked_exact = 0.5, magnitude = 0.5;
        for (index_t j = 0; j < count; ++j) {
          exact += static_cast<double>(weights[r][j]) * values[j][i];
          magnitude += std::abs(static_cast<double>(weights[r][j]) * values[j][i]);
          if (masked_weights[r][j] != 0.0f) masked_exact += static_cast<double>(masked_weights[r][j]) * masked_values[j][i];
        }
        const double tolerance = 2.0 * count * std::numeric_limits<float>::epsilon() * magnitude;
        BOOST_TEST_CONTEXT("rows " << ROWS << ", output " << r << ", width " << width << ", element " << i) {
          BOOST_TEST(std::abs(plain[r][i] - exact) <= tolerance);
          BOOST_TEST(std::isfinite(masked[r][i]));
          BOOST_TEST(std::abs(masked[r][i] - masked_exact) <= tolerance);
        }
      }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(lane_vector_sum_has_the_bits_of_the_array_sum) {
  std::mt19937 rng(20261202);
  for (int trial = 0; trial < 2000; ++trial) {
    const std::vector<float> values = mixed_floats(rng, detail::simd_lanes);
    float lanes[detail::simd_lanes];
    detail::lane_vectors v;
    for (int l = 0; l < detail::simd_lanes; ++l) {
      lanes[l] = values[l];
      v.part[l / detail::native_lanes][l % detail::native_lanes] = values[l];
    }
    BOOST_TEST(std::bit_cast<std::uint32_t>(detail::sum_lanes(v)) == std::bit_cast<std::uint32_t>(detail::sum_lanes(lanes)), "trial " << trial);
  }
}

BOOST_AUTO_TEST_CASE(dot_rows_match_a_double_reference_and_read_only_count_elements) {
  std::mt19937 rng(7);
  check_dot_rows_against_double<1>(rng);
  check_dot_rows_against_double<2>(rng);
  check_dot_rows_against_double<3>(rng);
  check_dot_rows_against_double<4>(rng);
}

BOOST_AUTO_TEST_CASE(dot_rows_continue_the_sums_they_are_given) {
  std::mt19937 rng(11);
  check_split_sums<1>(rng);
  check_split_sums<4>(rng);
}

BOOST_AUTO_TEST_CASE(weighted_rows_match_a_double_reference_and_skip_zero_weights) {
  std::mt19937 rng(13);
  check_weighted_rows<1>(rng);
  check_weighted_rows<2>(rng);
  check_weighted_rows<3>(rng);
  check_weighted_rows<4>(rng);
}
