// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Independent double-precision references for the kvcompact tests: a random cache builder
/// (owned storage, BHSD strided layout), random observation windows, softmax attention (docs/methods.md
/// P1), decode attention output, and the prefill scores of every scorer (P2 row reduction, P4 GQA
/// reduction, CORM's last_hit / importance terms, TOVA/WindowKV all-head sharing).
///
/// Everything here is written from docs/methods.md with plain loops in double precision; nothing calls
/// library math (only the library's plain data types kv_cache, layouts::strided and query_window are
/// used, to hand the data to a session). Random numbers come from std::mt19937 raw output converted
/// by hand (std::*_distribution output is implementation-defined), so every seed gives the same data
/// on every platform.
///
/// Index conventions follow the library: `s` sequence, `l` storage layer, `h` KV head, `g` query head
/// (KV head `g / G` with `G = query_heads / kv_heads`), `j` slot, `r` window row, `d` dimension.
#pragma once

#include <kvcompact/kv_cache.hpp>
#include <kvcompact/layouts/strided.hpp>
#include <kvcompact/numeric.hpp>
#include <kvcompact/query_window.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <vector>

namespace kvtest {

using kvcompact::index_t;

// ---------------------------------------------------------------------------------------------
// Element conversions (independent of kvcompact::to_float / from_float)
// ---------------------------------------------------------------------------------------------

/// @brief Stored fp32 value as double.
inline double to_double(float x) { return static_cast<double>(x); }
/// @brief Stored binary16 value as double (decoded here from the IEEE 754 fields, not by kvcompact).
inline double to_double(kvcompact::half_t x) {
  const double sign = (x.bits & 0x8000u) ? -1.0 : 1.0;
  const int exponent = (x.bits >> 10) & 0x1f;
  const int mantissa = x.bits & 0x3ff;
  if (exponent == 0x1f) return mantissa ? std::numeric_limits<double>::quiet_NaN() : sign * std::numeric_limits<double>::infinity();
  if (exponent == 0) return sign * std::ldexp(static_cast<double>(mantissa), -24);  // subnormal
  return sign * std::ldexp(static_cast<double>(1024 + mantissa), exponent - 25);
}
/// @brief Stored bfloat16 value as double (upper half of a binary32).
inline double to_double(kvcompact::bfloat16_t x) { return static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(x.bits) << 16)); }

/// @brief Converts a float to a storage element by truncation (fp16: mantissa truncated, magnitudes below
/// 2^-14 flushed to signed zero, above 65504 to infinity; bf16: upper 16 bits). Not correctly rounded on
/// purpose: the tests only need *some* valid stored value, and the reference reads back what is stored.
template <class T>
T from_float_test(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, kvcompact::half_t>) {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
    const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const int exponent = static_cast<int>((u >> 23) & 0xffu) - 127;
    if (exponent == 128) return kvcompact::half_t{static_cast<std::uint16_t>(sign | 0x7c00u | ((u & 0x7fffffu) ? 0x200u : 0u))};
    if (exponent > 15) return kvcompact::half_t{static_cast<std::uint16_t>(sign | 0x7c00u)};
    if (exponent < -14) return kvcompact::half_t{sign};
    return kvcompact::half_t{static_cast<std::uint16_t>(sign | (static_cast<std::uint32_t>(exponent + 15) << 10) | ((u & 0x7fffffu) >> 13))};
  } else {
    return kvcompact::bfloat16_t{static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(x) >> 16)};
  }
}

// ---------------------------------------------------------------------------------------------
// Portable random numbers
// ---------------------------------------------------------------------------------------------

/// @brief Uniform double in [-1, 1) from one raw mt19937 draw (portable, unlike std::uniform_real_distribution).
inline double uniform_pm1(std::mt19937& rng) { return static_cast<double>(rng()) / 2147483648.0 - 1.0; }
/// @brief Uniform integer in [lo, hi] (portable; modulo bias is irrelevant for tests).
inline index_t uniform_int(std::mt19937& rng, index_t lo, index_t hi) {
  return lo + static_cast<index_t>(rng() % static_cast<std::uint32_t>(hi - lo + 1));
}
/// @brief Fisher-Yates shuffle driven by raw mt19937 draws (std::shuffle is implementation-defined).
template <class V>
void shuffle_portable(V& v, std::mt19937& rng) {
  for (index_t i = static_cast<index_t>(v.size()) - 1; i > 0; --i) std::swap(v[i], v[uniform_int(rng, 0, i)]);
}

// ---------------------------------------------------------------------------------------------
// Random cache
// ---------------------------------------------------------------------------------------------

/// @brief Extents of a test cache.
struct cache_shape {
  index_t sequences = 1;  ///< batch
  index_t layers = 1;     ///< storage layers
  index_t kv_heads = 1;   ///< KV heads
  index_t capacity = 16;  ///< slots per head
  index_t head_dim = 16;  ///< head dimension
};

/// @brief How make_random_cache fills a cache.
struct fill_options {
  index_t min_length = 0;      ///< per-head length drawn uniformly from [min_length, max_length]
  index_t max_length = 0;      ///< 0 means capacity; min_length == max_length gives equal lengths
  index_t tokens = 0;          ///< 0: positions are 0..length-1 (dense prompt). Otherwise each head holds a random
                               ///< sorted subset of [0, tokens) that contains 0 (and tokens-1 when length >= 2)
  bool shuffle_slots = false;  ///< store the slots of each head in random order (slots need not be in position order)
  bool aligned_heads = false;  ///< every KV head of a (sequence, layer) gets head 0's length and slot positions
                               ///< (keys and values still differ), as needed by scores shared across heads (TOVA, WindowKV)
  double key_scale = 1.0;      ///< keys uniform in [-key_scale, key_scale)
  double value_scale = 1.0;    ///< values uniform in [-value_scale, value_scale)
};

/// @brief A kv_cache<T, layouts::strided> (BHSD) with owned storage. Slots beyond a head's length hold
/// random data too (never read by a correct library). Accessors return stored values as double.
template <class T = float>
struct random_cache {
  cache_shape shape;                    ///< extents
  kvcompact::layouts::strided layout;   ///< layouts::bhsd of the extents
  std::vector<T> keys;                  ///< key storage
  std::vector<T> values;                ///< value storage
  std::vector<std::int32_t> lengths;    ///< [s][l][h]
  std::vector<std::int32_t> positions;  ///< [s][l][h][capacity]

  explicit random_cache(const cache_shape& s)
      : shape(s),
        layout(kvcompact::layouts::bhsd(s.sequences, s.layers, s.kv_heads, s.capacity, s.head_dim)),
        keys(static_cast<std::size_t>(s.sequences * s.layers * s.kv_heads * s.capacity * s.head_dim)),
        values(keys.size()),
        lengths(static_cast<std::size_t>(s.sequences * s.layers * s.kv_heads), 0),
        positions(static_cast<std::size_t>(s.sequences * s.layers * s.kv_heads * s.capacity), -1) {}

  /// @brief Non-owning library view (pointers into this object: do not move it while a view is used).
  kvcompact::kv_cache<T, kvcompact::layouts::strided> view() {
    return {layout, keys.data(), values.data(), lengths.data(), positions.data()};
  }
  /// @brief Flat head index (same convention as kv_cache::head_index).
  index_t head_index(index_t s, index_t l, index_t h) const { return (s * shape.layers + l) * shape.kv_heads + h; }
  /// @brief Flat slot index (same convention as kv_cache::slot_index and session state).
  index_t slot_index(index_t s, index_t l, index_t h, index_t j) const { return head_index(s, l, h) * shape.capacity + j; }
  /// @brief Element offset of (s, l, h, j, d) in keys / values.
  index_t element(index_t s, index_t l, index_t h, index_t j, index_t d) const { return layout.offset(s, l, h, j) + d; }
  /// @brief Valid slots of a head.
  index_t length(index_t s, index_t l, index_t h) const { return lengths[static_cast<std::size_t>(head_index(s, l, h))]; }
  /// @brief Logical position of a slot.
  index_t position(index_t s, index_t l, index_t h, index_t j) const { return positions[static_cast<std::size_t>(slot_index(s, l, h, j))]; }
  /// @brief Stored key element as double.
  double key(index_t s, index_t l, index_t h, index_t j, index_t d) const { return to_double(keys[static_cast<std::size_t>(element(s, l, h, j, d))]); }
  /// @brief Stored value element as double.
  double value(index_t s, index_t l, index_t h, index_t j, index_t d) const {
    return to_double(values[static_cast<std::size_t>(element(s, l, h, j, d))]);
  }
  /// @brief Writes one slot: key, value (converted with from_float_test) and position (length untouched).
  void set_slot(index_t s, index_t l, index_t h, index_t j, const float* k, const float* v, index_t pos) {
    for (index_t d = 0; d < shape.head_dim; ++d) {
      keys[static_cast<std::size_t>(element(s, l, h, j, d))] = from_float_test<T>(k[d]);
      values[static_cast<std::size_t>(element(s, l, h, j, d))] = from_float_test<T>(v[d]);
    }
    positions[static_cast<std::size_t>(slot_index(s, l, h, j))] = static_cast<std::int32_t>(pos);
  }
};

/// @brief Builds a random cache (see fill_options). Deterministic for a given seed.
template <class T = float>
random_cache<T> make_random_cache(const cache_shape& shape, const fill_options& options, std::uint32_t seed) {
  random_cache<T> c(shape);
  std::mt19937 rng(seed);
  for (auto& k : c.keys) k = from_float_test<T>(static_cast<float>(options.key_scale * uniform_pm1(rng)));
  for (auto& v : c.values) v = from_float_test<T>(static_cast<float>(options.value_scale * uniform_pm1(rng)));
  const index_t max_length = options.max_length > 0 ? options.max_length : shape.capacity;
  if (options.min_length > max_length || max_length > shape.capacity) throw std::invalid_argument("make_random_cache: bad lengths");
  for (index_t s = 0; s < shape.sequences; ++s)
    for (index_t l = 0; l < shape.layers; ++l)
      for (index_t h = 0; h < shape.kv_heads; ++h) {
        if (options.aligned_heads && h > 0) {
          const index_t n0 = c.length(s, l, 0);
          c.lengths[static_cast<std::size_t>(c.head_index(s, l, h))] = static_cast<std::int32_t>(n0);
          for (index_t j = 0; j < n0; ++j)
            c.positions[static_cast<std::size_t>(c.slot_index(s, l, h, j))] = c.positions[static_cast<std::size_t>(c.slot_index(s, l, 0, j))];
          continue;
        }
        const index_t n = uniform_int(rng, options.min_length, max_length);
        c.lengths[static_cast<std::size_t>(c.head_index(s, l, h))] = static_cast<std::int32_t>(n);
        std::vector<std::int32_t> pos;
        if (options.tokens == 0) {
          for (index_t j = 0; j < n; ++j) pos.push_back(static_cast<std::int32_t>(j));
        } else {
          if (n > options.tokens) throw std::invalid_argument("make_random_cache: tokens");
          std::vector<std::int32_t> middle;
          for (index_t p = 1; p + 1 < options.tokens; ++p) middle.push_back(static_cast<std::int32_t>(p));
          shuffle_portable(middle, rng);
          if (n >= 1) pos.push_back(0);
          if (n >= 2) pos.push_back(static_cast<std::int32_t>(options.tokens - 1));
          for (index_t i = 0; i + 2 < n; ++i) pos.push_back(middle[static_cast<std::size_t>(i)]);
          std::sort(pos.begin(), pos.end());
        }
        if (options.shuffle_slots) shuffle_portable(pos, rng);
        for (index_t j = 0; j < n; ++j) c.positions[static_cast<std::size_t>(c.slot_index(s, l, h, j))] = pos[static_cast<std::size_t>(j)];
      }
  return c;
}

/// @brief Rounds keys and values to multiples of 1/64 (in [-2, 2) for caches filled with scale 1):
/// at most 8 significant bits, exactly representable in fp32, fp16 and bf16, so a cache converted
/// with convert_cache holds the same numbers in all three storage types.
inline void round_to_exact_values(random_cache<float>& c) {
  for (auto* v : {&c.keys, &c.values})
    for (auto& x : *v) x = std::round(x * 128.0f) / 64.0f;
}

/// @brief The same cache stored as @p T (lengths and positions copied).
template <class T>
random_cache<T> convert_cache(const random_cache<float>& c) {
  random_cache<T> out(c.shape);
  out.lengths = c.lengths;
  out.positions = c.positions;
  for (std::size_t i = 0; i < c.keys.size(); ++i) {
    out.keys[i] = from_float_test<T>(c.keys[i]);
    out.values[i] = from_float_test<T>(c.values[i]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Random observation window
// ---------------------------------------------------------------------------------------------

/// @brief Owned observation-window queries in the library's query_window layout.
struct random_window {
  index_t sequences = 1, layers = 1, query_heads = 1, rows = 1, head_dim = 16;  ///< extents
  std::vector<float> queries;                                                    ///< [s][l][g][r][d]
  std::vector<std::int32_t> positions;                                           ///< [s][r]

  /// @brief Library view (pointers into this object).
  kvcompact::query_window view() const { return {queries.data(), positions.data(), rows}; }
  /// @brief Query vector of (s, l, g, r).
  const float* query(index_t s, index_t l, index_t g, index_t r) const {
    return queries.data() + (((s * layers + l) * query_heads + g) * rows + r) * head_dim;
  }
  /// @brief Position of row r of sequence s.
  index_t position(index_t s, index_t r) const { return positions[static_cast<std::size_t>(s * rows + r)]; }
};

/// @brief Random window whose rows of sequence s sit at positions `last_position[s] - rows + 1 .. last_position[s]`
/// (the last `rows` prompt tokens). Queries uniform in [-scale, scale).
inline random_window make_random_window(index_t sequences, index_t layers, index_t query_heads, index_t rows, index_t head_dim,
                                        const std::vector<index_t>& last_position, double scale, std::uint32_t seed) {
  random_window w;
  w.sequences = sequences, w.layers = layers, w.query_heads = query_heads, w.rows = rows, w.head_dim = head_dim;
  std::mt19937 rng(seed);
  w.queries.resize(static_cast<std::size_t>(sequences * layers * query_heads * rows * head_dim));
  for (auto& q : w.queries) q = static_cast<float>(scale * uniform_pm1(rng));
  for (index_t s = 0; s < sequences; ++s)
    for (index_t r = 0; r < rows; ++r) w.positions.push_back(static_cast<std::int32_t>(last_position[static_cast<std::size_t>(s)] - rows + 1 + r));
  return w;
}

/// @brief Rounds the window's queries to multiples of 1/64 (at most 8 significant bits for |q| < 2),
/// exactly representable in bf16 and fp16: a backend that converts window queries to the storage type
/// (the CUDA scoring kernels do) then sees the same numbers as the fp32 CPU backend, and the two differ
/// only by summation order. Tests whose later steps depend on identical prefill keep-sets use it.
inline void round_to_exact_values(random_window& w) {
  for (auto& q : w.queries) q = std::round(q * 64.0f) / 64.0f;
}

/// @brief Random fp32 vector of `count` entries uniform in [-scale, scale).
inline std::vector<float> random_vector(index_t count, double scale, std::mt19937& rng) {
  std::vector<float> v(static_cast<std::size_t>(count));
  for (auto& x : v) x = static_cast<float>(scale * uniform_pm1(rng));
  return v;
}

// ---------------------------------------------------------------------------------------------
// Attention references (P1, decode)
// ---------------------------------------------------------------------------------------------

/// @brief Default softmax scale 1/sqrt(d), in double.
inline double default_scale(index_t head_dim) { return 1.0 / std::sqrt(static_cast<double>(head_dim)); }

/// @brief Softmax probabilities of one query over the valid slots of one head.
struct probability_row {
  std::vector<double> p;  ///< [length] probability per slot; exactly 0 for slots not visible
  index_t visible = 0;    ///< number of visible slots (n in CORM's alpha / n)
};

/// @brief softmax_j(q . k_j * scale) over the slots j of head (s, l, h) whose position is <= query_position
/// (causal masking by logical position, docs/methods.md P1), in double.
template <class T>
probability_row attention_probabilities(const random_cache<T>& c, index_t s, index_t l, index_t h, const float* q, index_t query_position,
                                        double scale) {
  probability_row out;
  const index_t n = c.length(s, l, h);
  out.p.assign(static_cast<std::size_t>(n), 0.0);
  std::vector<double> logit(static_cast<std::size_t>(n), 0.0);
  double max_logit = -std::numeric_limits<double>::infinity();
  for (index_t j = 0; j < n; ++j) {
    if (c.position(s, l, h, j) > query_position) continue;
    double dot = 0.0;
    for (index_t d = 0; d < c.shape.head_dim; ++d) dot += static_cast<double>(q[d]) * c.key(s, l, h, j, d);
    logit[static_cast<std::size_t>(j)] = dot * scale;
    max_logit = std::max(max_logit, logit[static_cast<std::size_t>(j)]);
    ++out.visible;
  }
  double sum = 0.0;
  for (index_t j = 0; j < n; ++j)
    if (c.position(s, l, h, j) <= query_position) sum += std::exp(logit[static_cast<std::size_t>(j)] - max_logit);
  for (index_t j = 0; j < n; ++j)
    if (c.position(s, l, h, j) <= query_position) out.p[static_cast<std::size_t>(j)] = std::exp(logit[static_cast<std::size_t>(j)] - max_logit) / sum;
  return out;
}

/// @brief Decode attention output sum_j p_j v_j of one query head over head (s, l, h) (visible: position <= query_position).
/// Returns head_dim zeros when no slot is visible (empty softmax).
template <class T>
std::vector<double> attention_output(const random_cache<T>& c, index_t s, index_t l, index_t h, const float* q, index_t query_position,
                                     double scale) {
  const probability_row row = attention_probabilities(c, s, l, h, q, query_position, scale);
  std::vector<double> out(static_cast<std::size_t>(c.shape.head_dim), 0.0);
  for (index_t j = 0; j < c.length(s, l, h); ++j)
    for (index_t d = 0; d < c.shape.head_dim; ++d) out[static_cast<std::size_t>(d)] += row.p[static_cast<std::size_t>(j)] * c.value(s, l, h, j, d);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Score references
// ---------------------------------------------------------------------------------------------

/// @brief A reduction (P2 over window rows, P4 over query heads).
enum class reduce { sum, mean, max };

/// @brief What one window row contributes for one slot.
enum class term_kind {
  probability,      ///< a[g][r][j] (SnapKV, H2O, TOVA, WindowKV)
  corm_last_hit,    ///< position of row r when a * n_r >= alpha, else -1 (CORM faithful, docs/methods.md 1.6)
  corm_importance,  ///< a * n_r (budgeted CORM's u, docs/methods.md 1.7)
};

/// @brief Description of an attention scorer's prefill score.
struct attention_score_spec {
  reduce rows = reduce::sum;         ///< over the window rows (mean divides by the number of rows)
  reduce group = reduce::mean;       ///< over the query heads of the KV head (or of the layer when all_heads)
  bool all_heads = false;            ///< every KV head gets the reduction over ALL query heads (TOVA, WindowKV)
  term_kind term = term_kind::probability;  ///< row term
  double alpha = 1.0;                ///< CORM threshold multiplier
  bool position_reference = false;   ///< CORM n_r = position + 1 instead of the number of visible keys
};

/// @brief Folds values with a reduction (mean divides by `count`, which may exceed values.size() when
/// absent terms count as zero).
inline double reduce_values(reduce r, const std::vector<double>& values, index_t count) {
  if (r == reduce::max) {
    double m = -std::numeric_limits<double>::infinity();
    for (double v : values) m = std::max(m, v);
    return m;
  }
  double sum = 0.0;
  for (double v : values) sum += v;
  return r == reduce::mean ? sum / static_cast<double>(count) : sum;
}

/// @brief CORM's n_r for a row: visible keys, or position + 1.
inline double corm_reference_count(const attention_score_spec& spec, index_t visible, index_t query_position) {
  return spec.position_reference ? static_cast<double>(query_position + 1) : static_cast<double>(visible);
}

/// @brief Row-reduced score of one query head g for every slot of its KV head: reduction over the window rows
/// that see the slot (rows that do not see it contribute nothing; for mean, the divisor is still the number of
/// rows, i.e. an unseen key has probability 0). `min_margin` (if given) is lowered to the smallest
/// |a * n - alpha| / alpha over visible (row, slot) pairs (CORM terms only): how far fp32 may be from flipping a decision.
template <class T>
std::vector<double> query_head_scores(const random_cache<T>& c, const random_window& w, index_t s, index_t l, index_t g, index_t query_heads,
                                      double scale, const attention_score_spec& spec, double* min_margin = nullptr) {
  const index_t group_size = query_heads / c.shape.kv_heads;
  const index_t h = g / group_size;
  const index_t n = c.length(s, l, h);
  std::vector<std::vector<double>> terms(static_cast<std::size_t>(n));
  for (index_t r = 0; r < w.rows; ++r) {
    const index_t qp = w.position(s, r);
    const probability_row row = attention_probabilities(c, s, l, h, w.query(s, l, g, r), qp, scale);
    for (index_t j = 0; j < n; ++j) {
      if (c.position(s, l, h, j) > qp) continue;
      const double a = row.p[static_cast<std::size_t>(j)];
      const double normalised = a * corm_reference_count(spec, row.visible, qp);
      double term = a;
      if (spec.term != term_kind::probability && min_margin)
        *min_margin = std::min(*min_margin, std::abs(normalised - spec.alpha) / spec.alpha);
      if (spec.term == term_kind::corm_importance) term = normalised;
      if (spec.term == term_kind::corm_last_hit) term = normalised >= spec.alpha ? static_cast<double>(qp) : -1.0;
      terms[static_cast<std::size_t>(j)].push_back(term);
    }
  }
  std::vector<double> out(static_cast<std::size_t>(n));
  for (index_t j = 0; j < n; ++j) out[static_cast<std::size_t>(j)] = reduce_values(spec.rows, terms[static_cast<std::size_t>(j)], w.rows);
  return out;
}

/// @brief Prefill scores of every slot of every KV head of (s, l) for an attention scorer:
/// `scores[h][j]` = group reduction over the query heads of KV head h (all query heads when spec.all_heads)
/// of the row-reduced scores. With all_heads the KV heads must have equal lengths and aligned slots
/// (the score of slot j averages slot j of every head, as the library's shared scores do).
template <class T>
std::vector<std::vector<double>> prefill_attention_scores(const random_cache<T>& c, const random_window& w, index_t s, index_t l,
                                                          index_t query_heads, double scale, const attention_score_spec& spec,
                                                          double* min_margin = nullptr) {
  const index_t group_size = query_heads / c.shape.kv_heads;
  std::vector<std::vector<double>> per_query(static_cast<std::size_t>(query_heads));
  for (index_t g = 0; g < query_heads; ++g) per_query[static_cast<std::size_t>(g)] = query_head_scores(c, w, s, l, g, query_heads, scale, spec, min_margin);
  std::vector<std::vector<double>> out(static_cast<std::size_t>(c.shape.kv_heads));
  for (index_t h = 0; h < c.shape.kv_heads; ++h) {
    const index_t first = spec.all_heads ? 0 : h * group_size;
    const index_t count = spec.all_heads ? query_heads : group_size;
    for (index_t j = 0; j < c.length(s, l, h); ++j) {
      std::vector<double> terms;
      for (index_t g = first; g < first + count; ++g) terms.push_back(per_query[static_cast<std::size_t>(g)].at(static_cast<std::size_t>(j)));
      out[static_cast<std::size_t>(h)].push_back(reduce_values(spec.group, terms, count));
    }
  }
  return out;
}

/// @brief KNorm score of a slot: -||k_j||_2 (docs/methods.md 6.8), in double.
template <class T>
double key_norm_score(const random_cache<T>& c, index_t s, index_t l, index_t h, index_t j) {
  double sum = 0.0;
  for (index_t d = 0; d < c.shape.head_dim; ++d) sum += c.key(s, l, h, j, d) * c.key(s, l, h, j, d);
  return -std::sqrt(sum);
}

/// @brief Recency score of a slot: its logical position (StreamingLLM's eviction order).
template <class T>
double recency_score(const random_cache<T>& c, index_t s, index_t l, index_t h, index_t j) {
  return static_cast<double>(c.position(s, l, h, j));
}

// ---------------------------------------------------------------------------------------------
// Decode-step references (one query per query head; queries[g * head_dim + d])
// ---------------------------------------------------------------------------------------------

/// @brief Probabilities of the current token's queries reduced over query heads, per slot of KV head h:
/// reduction `r` over the group of h (all query heads when all_heads; needs aligned heads). H2O adds the
/// group mean each step (6.2); TOVA replaces its state by the all-head mean (6.3).
template <class T>
std::vector<double> decode_reduced_probabilities(const random_cache<T>& c, index_t s, index_t l, index_t h, const float* queries,
                                                 index_t query_heads, index_t position, double scale, reduce r, bool all_heads) {
  const index_t group_size = query_heads / c.shape.kv_heads;
  const index_t first = all_heads ? 0 : h * group_size;
  const index_t count = all_heads ? query_heads : group_size;
  const index_t n = c.length(s, l, h);
  std::vector<std::vector<double>> terms(static_cast<std::size_t>(n));
  for (index_t g = first; g < first + count; ++g) {
    const probability_row row = attention_probabilities(c, s, l, g / group_size, queries + g * c.shape.head_dim, position, scale);
    for (index_t j = 0; j < n; ++j) terms[static_cast<std::size_t>(j)].push_back(row.p.at(static_cast<std::size_t>(j)));
  }
  std::vector<double> out(static_cast<std::size_t>(n));
  for (index_t j = 0; j < n; ++j) out[static_cast<std::size_t>(j)] = reduce_values(r, terms[static_cast<std::size_t>(j)], count);
  return out;
}

/// @brief CORM decode importance (docs/methods.md 1.4, 1.8 reading (a)): slot j of KV head h is important to
/// the current token iff some query head g of the group has a[g][j] >= alpha / n (n = visible keys, or
/// position + 1). `min_margin` is lowered to the smallest |a*n - alpha| / alpha seen.
template <class T>
std::vector<bool> corm_decode_hits(const random_cache<T>& c, index_t s, index_t l, index_t h, const float* queries, index_t query_heads,
                                   index_t position, double scale, double alpha, bool position_reference, double* min_margin = nullptr) {
  const index_t group_size = query_heads / c.shape.kv_heads;
  const index_t n = c.length(s, l, h);
  std::vector<bool> hit(static_cast<std::size_t>(n), false);
  for (index_t g = h * group_size; g < (h + 1) * group_size; ++g) {
    const probability_row row = attention_probabilities(c, s, l, h, queries + g * c.shape.head_dim, position, scale);
    const double reference = position_reference ? static_cast<double>(position + 1) : static_cast<double>(row.visible);
    for (index_t j = 0; j < n; ++j) {
      if (c.position(s, l, h, j) > position) continue;
      const double normalised = row.p[static_cast<std::size_t>(j)] * reference;
      if (min_margin) *min_margin = std::min(*min_margin, std::abs(normalised - alpha) / alpha);
      if (normalised >= alpha) hit[static_cast<std::size_t>(j)] = true;
    }
  }
  return hit;
}

// ---------------------------------------------------------------------------------------------
// Session harness
// ---------------------------------------------------------------------------------------------

/// @brief Owned, 8-byte aligned state and workspace for a cpu::session (sizes from the session's
/// state_bytes / workspace_bytes).
struct session_memory {
  std::vector<std::uint64_t> state_words;      ///< backing store of the state
  std::vector<std::uint64_t> workspace_words;  ///< backing store of the workspace
  std::size_t state_size = 0;                  ///< bytes asked for
  std::size_t workspace_size = 0;              ///< bytes asked for

  /// @brief Allocates what Session asks for.
  template <class Session, class Layout>
  static session_memory for_session(const Layout& layout, const kvcompact::attention_shape& shape) {
    session_memory m;
    m.state_size = Session::state_bytes(layout);
    m.workspace_size = Session::workspace_bytes(layout, shape);
    m.state_words.assign(m.state_size / 8 + 1, 0);
    m.workspace_words.assign(m.workspace_size / 8 + 1, 0);
    return m;
  }
  /// @brief The state span.
  std::span<std::byte> state() { return {reinterpret_cast<std::byte*>(state_words.data()), state_size}; }
  /// @brief The workspace span.
  std::span<std::byte> workspace() { return {reinterpret_cast<std::byte*>(workspace_words.data()), workspace_size}; }
};

/// @brief True when |a - b| <= abs_tol + rel_tol * max(|a|, |b|).
inline bool close(double a, double b, double rel_tol, double abs_tol) {
  return std::abs(a - b) <= abs_tol + rel_tol * std::max(std::abs(a), std::abs(b));
}

}  // namespace kvtest
