// SPDX-License-Identifier: Apache-2.0
// Storage element conversions (kvcompact/numeric.hpp): exact widening of every binary16 / bfloat16 bit
// pattern, narrowing round trips, round-to-nearest-even against an independent table-based reference
// (every finite value of the target format, decoded in double from the IEEE formula), ties, subnormals,
// overflow to infinity, signed zero and NaN.
#include <kvcompact/numeric.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace {

using kvcompact::bfloat16_t;
using kvcompact::half_t;

// IEEE formula: (-1)^s * 2^(e - bias) * (1 + m / 2^mbits), subnormals 2^(1 - bias) * m / 2^mbits.
double decode(std::uint32_t bits, int exponent_bits, int mantissa_bits) {
  const std::uint32_t mantissa = bits & ((1u << mantissa_bits) - 1u);
  const std::uint32_t exponent = (bits >> mantissa_bits) & ((1u << exponent_bits) - 1u);
  const bool negative = (bits >> (mantissa_bits + exponent_bits)) & 1u;
  const int bias = (1 << (exponent_bits - 1)) - 1;
  double magnitude;
  if (exponent == (1u << exponent_bits) - 1u) magnitude = mantissa == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  else if (exponent == 0) magnitude = std::ldexp(static_cast<double>(mantissa), 1 - bias - mantissa_bits);
  else magnitude = std::ldexp(1.0 + static_cast<double>(mantissa) / static_cast<double>(1u << mantissa_bits), static_cast<int>(exponent) - bias);
  return negative ? -magnitude : magnitude;
}
double decode_half(std::uint16_t b) { return decode(b, 5, 10); }
double decode_bf16(std::uint16_t b) { return decode(b, 8, 7); }

// Round-to-nearest-even reference over the table of all positive finite values of a format, with the
// infinity pattern standing in as the next value 2^(emax+1) (IEEE overflow rule: values at or above the
// midpoint between the largest finite value and 2^(emax+1) round to infinity; the largest finite value has
// an odd mantissa, so the midpoint itself rounds to infinity).
struct rne_reference {
  std::vector<double> value;  // ascending
  std::vector<std::uint16_t> bits;
  std::uint16_t sign_bit = 0x8000;

  rne_reference(std::uint16_t largest_finite, std::uint16_t infinity_bits, double infinity_stand_in, double (*dec)(std::uint16_t)) {
    for (std::uint32_t b = 0; b <= largest_finite; ++b) {
      value.push_back(dec(static_cast<std::uint16_t>(b)));
      bits.push_back(static_cast<std::uint16_t>(b));
    }
    value.push_back(infinity_stand_in);
    bits.push_back(infinity_bits);
  }
  std::uint16_t round(double x) const {
    const std::uint16_t sign = std::signbit(x) ? sign_bit : 0;
    const double a = std::fabs(x);
    if (a >= value.back()) return sign | bits.back();
    const auto upper = static_cast<std::size_t>(std::upper_bound(value.begin(), value.end(), a) - value.begin());  // value[upper] > a
    const std::size_t lower = upper - 1;                                                                          // value[lower] <= a
    const double below = a - value[lower], above = value[upper] - a;
    std::size_t pick = below < above ? lower : (above < below ? upper : ((bits[lower] & 1u) == 0 ? lower : upper));
    return sign | bits[pick];
  }
};

const rne_reference& half_reference() {
  static const rne_reference r(0x7bff, 0x7c00, 65536.0, &decode_half);
  return r;
}
const rne_reference& bf16_reference() {
  static const rne_reference r(0x7f7f, 0x7f80, std::ldexp(1.0, 128), &decode_bf16);
  return r;
}

float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }

// Random floats: raw 32-bit patterns (every exponent, float subnormals included) and, for half, values
// log-uniform over the binary16 range (subnormals and the overflow edge included).
std::vector<float> test_floats(std::uint32_t seed, bool half_range) {
  std::mt19937 rng(seed);
  std::vector<float> out;
  for (int i = 0; i < 200000; ++i) {
    const float x = from_bits(static_cast<std::uint32_t>(rng()));
    if (!std::isnan(x)) out.push_back(x);
  }
  for (int i = 0; i < 200000; ++i) {
    // exponent uniform in [-27, 17] (half) or [-150, 128] (bf16), 23 random mantissa bits, random sign
    const int lo = half_range ? -27 : -150, hi = half_range ? 17 : 128;
    const int e = lo + static_cast<int>(rng() % static_cast<std::uint32_t>(hi - lo + 1));
    const double m = 1.0 + static_cast<double>(rng() & 0x7fffffu) / 8388608.0;
    const float x = static_cast<float>(std::ldexp(m, e) * ((rng() & 1u) ? -1.0 : 1.0));
    if (!std::isnan(x)) out.push_back(x);
  }
  for (std::uint32_t b = 1; b < 4096; ++b) out.push_back(from_bits(b * 1021u));  // float subnormals
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(half_widening_matches_ieee_formula_for_all_bit_patterns) {
  int mismatches = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float got = kvcompact::to_float(half_t{static_cast<std::uint16_t>(b)});
    const double want = decode_half(static_cast<std::uint16_t>(b));
    if (std::isnan(want)) {
      mismatches += !std::isnan(got);
      continue;
    }
    mismatches += !(static_cast<double>(got) == want && std::signbit(got) == std::signbit(want));
  }
  BOOST_TEST(mismatches == 0);
}

BOOST_AUTO_TEST_CASE(bf16_widening_matches_ieee_formula_for_all_bit_patterns) {
  int mismatches = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float got = kvcompact::to_float(bfloat16_t{static_cast<std::uint16_t>(b)});
    const double want = decode_bf16(static_cast<std::uint16_t>(b));
    if (std::isnan(want)) {
      mismatches += !std::isnan(got);
      continue;
    }
    mismatches += !(static_cast<double>(got) == want && std::signbit(got) == std::signbit(want));
  }
  BOOST_TEST(mismatches == 0);
}

BOOST_AUTO_TEST_CASE(round_trips_are_exact_for_all_non_nan_bit_patterns) {
  int half_bad = 0, bf16_bad = 0, nan_bad = 0, nan_count = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float h = kvcompact::to_float(half_t{bits});
    const float f = kvcompact::to_float(bfloat16_t{bits});
    if (std::isnan(h)) {
      ++nan_count;
      nan_bad += !std::isnan(kvcompact::to_float(kvcompact::from_float<half_t>(h)));
    } else {
      half_bad += kvcompact::from_float<half_t>(h).bits != bits;
    }
    if (std::isnan(f)) nan_bad += !std::isnan(kvcompact::to_float(kvcompact::from_float<bfloat16_t>(f)));
    else bf16_bad += kvcompact::from_float<bfloat16_t>(f).bits != bits;
  }
  BOOST_TEST(half_bad == 0);
  BOOST_TEST(bf16_bad == 0);
  BOOST_TEST(nan_bad == 0);          // NaN stays NaN (payload not specified)
  BOOST_TEST(nan_count == 2 * 1023);  // sanity: the loop saw every binary16 NaN
}

BOOST_AUTO_TEST_CASE(half_rounding_matches_nearest_even_reference_on_random_floats) {
  const auto& ref = half_reference();
  int bad = 0;
  std::uint32_t first_bad = 0;
  for (float x : test_floats(20240611u, true)) {
    const std::uint16_t got = kvcompact::from_float<half_t>(x).bits, want = ref.round(x);
    if (got != want && bad++ == 0) first_bad = std::bit_cast<std::uint32_t>(x);
  }
  BOOST_TEST(bad == 0, "first mismatch at float bits 0x" << std::hex << first_bad);
}

BOOST_AUTO_TEST_CASE(bf16_rounding_matches_nearest_even_reference_on_random_floats) {
  const auto& ref = bf16_reference();
  int bad = 0;
  std::uint32_t first_bad = 0;
  for (float x : test_floats(77u, false)) {
    const std::uint16_t got = kvcompact::from_float<bfloat16_t>(x).bits, want = ref.round(x);
    if (got != want && bad++ == 0) first_bad = std::bit_cast<std::uint32_t>(x);
  }
  BOOST_TEST(bad == 0, "first mismatch at float bits 0x" << std::hex << first_bad);
}

// Every tie (exact midpoint of two neighbouring finite values, both signs) goes to the even pattern; one
// float ulp either side goes to the nearer neighbour. Midpoints need one bit more than the format, so
// they are exact floats (subnormal midpoints included).
template <class T>
void check_all_ties(const rne_reference& ref, int& bad_ties, int& bad_sides) {
  for (std::size_t i = 0; i + 2 < ref.value.size(); ++i) {  // pairs of finite neighbours
    const double a = ref.value[i], b = ref.value[i + 1];
    const float mid = static_cast<float>((a + b) / 2);
    if (static_cast<double>(mid) != (a + b) / 2) {
      ++bad_ties;  // would make the test meaningless
      continue;
    }
    const std::uint16_t even = (ref.bits[i] & 1u) == 0 ? ref.bits[i] : ref.bits[i + 1];
    for (float sign : {1.0f, -1.0f}) {
      const std::uint16_t s = sign < 0 ? 0x8000 : 0;
      bad_ties += kvcompact::from_float<T>(sign * mid).bits != (s | even);
      bad_sides += kvcompact::from_float<T>(sign * std::nextafter(mid, 0.0f)).bits != (s | ref.bits[i]);
      bad_sides += kvcompact::from_float<T>(sign * std::nextafter(mid, std::numeric_limits<float>::infinity())).bits != (s | ref.bits[i + 1]);
    }
  }
}

BOOST_AUTO_TEST_CASE(ties_round_to_even_and_neighbours_to_nearest) {
  int ties = 0, sides = 0;
  check_all_ties<half_t>(half_reference(), ties, sides);
  BOOST_TEST(ties == 0);
  BOOST_TEST(sides == 0);
  ties = sides = 0;
  check_all_ties<bfloat16_t>(bf16_reference(), ties, sides);
  BOOST_TEST(ties == 0);
  BOOST_TEST(sides == 0);
}

BOOST_AUTO_TEST_CASE(overflow_goes_to_infinity_and_specials_are_kept) {
  using kvcompact::from_float;
  BOOST_TEST(from_float<half_t>(65504.0f).bits == 0x7bff);
  BOOST_TEST(from_float<half_t>(std::nextafter(65520.0f, 0.0f)).bits == 0x7bff);  // just below the midpoint to 2^16
  BOOST_TEST(from_float<half_t>(65520.0f).bits == 0x7c00);                         // the midpoint: even neighbour is inf
  BOOST_TEST(from_float<half_t>(-65520.0f).bits == 0xfc00);
  BOOST_TEST(from_float<half_t>(1e10f).bits == 0x7c00);
  BOOST_TEST(from_float<half_t>(std::numeric_limits<float>::max()).bits == 0x7c00);
  BOOST_TEST(from_float<half_t>(std::numeric_limits<float>::infinity()).bits == 0x7c00);
  BOOST_TEST(from_float<half_t>(-std::numeric_limits<float>::infinity()).bits == 0xfc00);
  BOOST_TEST(from_float<bfloat16_t>(std::numeric_limits<float>::max()).bits == 0x7f80);  // 0x7f7fffff rounds up to inf
  BOOST_TEST(from_float<bfloat16_t>(from_bits(0x7f7f7fffu)).bits == 0x7f7f);
  BOOST_TEST(from_float<bfloat16_t>(-std::numeric_limits<float>::infinity()).bits == 0xff80);
  // signed zero and underflow
  BOOST_TEST(from_float<half_t>(-0.0f).bits == 0x8000);
  BOOST_TEST(from_float<bfloat16_t>(-0.0f).bits == 0x8000);
  BOOST_TEST(from_float<half_t>(std::ldexp(1.0f, -25)).bits == 0x0000);                   // half of the smallest subnormal: tie to 0
  BOOST_TEST(from_float<half_t>(std::nextafter(std::ldexp(1.0f, -25), 1.0f)).bits == 0x0001);
  BOOST_TEST(from_float<half_t>(-std::ldexp(1.0f, -30)).bits == 0x8000);
  BOOST_TEST(from_float<bfloat16_t>(from_bits(1u)).bits == 0x0000);  // smallest float subnormal
  // NaN stays NaN
  const float nan = std::numeric_limits<float>::quiet_NaN();
  BOOST_TEST(std::isnan(kvcompact::to_float(from_float<half_t>(nan))));
  BOOST_TEST(std::isnan(kvcompact::to_float(from_float<bfloat16_t>(nan))));
  BOOST_TEST(std::isnan(kvcompact::to_float(from_float<bfloat16_t>(from_bits(0x7f800001u)))));  // signalling NaN whose top bits look like inf
  BOOST_TEST(std::isnan(kvcompact::to_float(from_float<half_t>(from_bits(0xff800001u)))));
}
