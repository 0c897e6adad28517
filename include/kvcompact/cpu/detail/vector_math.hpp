// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief SIMD building blocks of the CPU backend: row loads from fp32/fp16/bf16 storage, dot
/// products, scaled and weighted row sums, exp, prefetch hints, and the register-blocked tile of the
/// window products.
///
/// Written as fixed-width lane loops (arrays of `simd_lanes` independent accumulators, summed in a fixed
/// order at the end) that GCC and Clang vectorise at -O2/-O3 for whatever vector width the consumer
/// compiles for (-march), with no intrinsics and no pragma: the same source runs on SSE, AVX2, AVX-512
/// or NEON, and its results do not depend on whether the compiler vectorised it (every sum has one
/// fixed association; simd_lanes and sum_lanes() come from detail/lane_sums.hpp, shared with the
/// components' own definitions). The two kernels that keep several rows of sums at once (dot_rows,
/// weighted_rows) hold them in native vectors of the target (native_floats, lane_vectors; same lane
/// arithmetic), because GCC keeps neither their lane-loop form nor a 16-float vector extension in
/// registers (the 8-row window tile has a vector type of its own). docs/cpu_backend.md explains the
/// choice.
#pragma once

#include <kvcompact/detail/lane_sums.hpp>
#include <kvcompact/numeric.hpp>
#include <kvcompact/types.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {

/// Dimensions one row load converts at a time (the stack buffer of a converted row chunk).
inline constexpr index_t row_chunk = 128;

/// e^x for x <= 88 (Cody-Waite range reduction, Cephes' degree-6 polynomial; about 1 ulp), 0 below
/// -87.3 (where float's e^x underflows), NaN for NaN. No branch and no floating-point select (GCC
/// would split the paths and then refuse to speculate the int-to-float conversion), so loops calling
/// it vectorise.
inline float exp_approx(float x) {
  constexpr float low = -87.33654f;
  const float scaled = x * 1.44269504088896341f;
  std::int32_t rounded = static_cast<std::int32_t>(scaled + (scaled < 0.0f ? -0.5f : 0.5f));  // nearest integer (also under -ffast-math)
  rounded = rounded < -126 ? -126 : (rounded > 127 ? 127 : rounded);
  const float n = static_cast<float>(rounded);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const float power = std::bit_cast<float>(static_cast<std::uint32_t>(rounded + 127) << 23);
  const std::uint32_t keep = 0u - static_cast<std::uint32_t>(!(x < low));  // all ones unless x underflows
  return std::bit_cast<float>(std::bit_cast<std::uint32_t>(y * power) & keep);
}

/// Elements [first, first + count) of a stored row (element stride @p stride) converted to fp32
/// into @p buffer (at least @p count floats), read in element order. @return @p buffer
template <class T>
const float* copy_row(const T* row, index_t stride, index_t first, index_t count, float* buffer) {
  if (stride == 1)
    for (index_t i = 0; i < count; ++i) buffer[i] = to_float(row[first + i]);
  else
    for (index_t i = 0; i < count; ++i) buffer[i] = to_float(row[(first + i) * stride]);
  return buffer;
}

/// Elements [first, first + count) of a stored row (element stride @p stride) as fp32: a pointer
/// into the row itself when it already is contiguous fp32, otherwise copy_row() into @p buffer
/// (at least @p count floats).
template <class T>
const float* load_row(const T* row, index_t stride, index_t first, index_t count, float* buffer) {
  if constexpr (std::is_same_v<T, float>)
    if (stride == 1) return row + first;
  return copy_row(row, stride, first, count, buffer);
}

/// Floats in one vector register of the target: 16 with AVX-512, 8 with AVX/AVX2, 4 otherwise (SSE,
/// NEON). Element-wise kernels that keep blocks of sums in registers count their registers in these.
inline constexpr int native_lanes =
#if defined(__AVX512F__)
    16;
#elif defined(__AVX__)
    8;
#else
    4;
#endif

/// Vector registers of the target: 32 with AVX-512 and AArch64, 16 otherwise (SSE, AVX/AVX2).
inline constexpr int vector_registers =
#if defined(__AVX512F__) || defined(__aarch64__)
    32;
#else
    16;
#endif

/// native_lanes floats as one value: one vector register of the target.
using native_floats = float __attribute__((vector_size(native_lanes * sizeof(float))));

/// Native vectors that hold simd_lanes floats (1 with AVX-512, 2 with AVX/AVX2, 4 otherwise).
inline constexpr int lane_parts = simd_lanes / native_lanes;

/// simd_lanes partial sums (see detail::sum_lanes()) in native vectors: lane l is element
/// l % native_lanes of part l / native_lanes. For kernels that keep several rows of sums at once:
/// in lane-loop form GCC does not keep those in registers, and as one 16-float vector extension it
/// lowers them through the stack on targets narrower than 512 bits. Element-wise arithmetic only, so
/// every lane sums in the order of a lane loop.
struct lane_vectors {
  native_floats part[lane_parts];  ///< lanes [p * native_lanes, (p + 1) * native_lanes) in part[p]
};

/// Sum of the lanes of @p v in the order of detail::sum_lanes() of an array (lanes l and l + 8,
/// then l and l + 4, then (0 + 2) + (1 + 3)), folded in registers: a store and reload of the lanes
/// stalls store forwarding (with AVX2 that made TOVA's prefill at 16k tokens 1.4x slower).
inline float sum_lanes(const lane_vectors& v) {
  static_assert(simd_lanes == 16, "the folds below name 16 lanes");
  using quarter_lanes = float __attribute__((vector_size(4 * sizeof(float))));
#if defined(__AVX512F__)
  using half_lanes = float __attribute__((vector_size(8 * sizeof(float))));
  const native_floats& all = v.part[0];
  const half_lanes half = __builtin_shufflevector(all, all, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(all, all, 8, 9, 10, 11, 12, 13, 14, 15);
  const quarter_lanes quarter = __builtin_shufflevector(half, half, 0, 1, 2, 3) + __builtin_shufflevector(half, half, 4, 5, 6, 7);
#elif defined(__AVX__)
  const native_floats half = v.part[0] + v.part[1];
  const quarter_lanes quarter = __builtin_shufflevector(half, half, 0, 1, 2, 3) + __builtin_shufflevector(half, half, 4, 5, 6, 7);
#else
  const quarter_lanes quarter = (v.part[0] + v.part[2]) + (v.part[1] + v.part[3]);
#endif
  return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

/// `sums[r] += queries[r] * key` lane-wise over @p count dimensions for ROWS query rows (lane l
/// takes dimensions l, l + simd_lanes, ...), reading the key once for all of them (the GQA group's
/// query heads served from one load); sum_lanes() of each finishes its dot product. The ROWS sums
/// advance together in registers (independent chains, so the FMA latency is hidden). Always inlined:
/// called once per key row, an out-of-line copy (GCC 12 made one, the sums zeroed by memset and
/// handed back through the stack) cost several times the loop's own arithmetic.
template <int ROWS>
[[gnu::always_inline]] inline void dot_rows(const float* const* queries, const float* key, index_t count, lane_vectors (&sums)[ROWS]) {
  lane_vectors acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = sums[r];  // locals: through the reference, every step stored its sums (they may alias the rows)
  auto accumulate = [&](const float* key_lanes, const float* const* query_lanes) {
    native_floats k[lane_parts], q;
    for (int p = 0; p < lane_parts; ++p) std::memcpy(&k[p], key_lanes + p * native_lanes, sizeof q);
    for (int r = 0; r < ROWS; ++r)
      for (int p = 0; p < lane_parts; ++p) {
        std::memcpy(&q, query_lanes[r] + p * native_lanes, sizeof q);
        acc[r].part[p] += q * k[p];
      }
  };
  index_t d = 0;
  for (; d + simd_lanes <= count; d += simd_lanes) {
    const float* shifted[ROWS];
    for (int r = 0; r < ROWS; ++r) shifted[r] = queries[r] + d;
    accumulate(key + d, shifted);
  }
  if (d < count) {  // the last count - d dimensions, zero-padded
    float key_tail[simd_lanes] = {}, query_tail[ROWS][simd_lanes] = {};
    const float* tails[ROWS];
    for (index_t l = 0; d + l < count; ++l) key_tail[l] = key[d + l];
    for (int r = 0; r < ROWS; ++r) {
      for (index_t l = 0; d + l < count; ++l) query_tail[r][l] = queries[r][d + l];
      tails[r] = query_tail[r];
    }
    accumulate(key_tail, tails);
  }
  for (int r = 0; r < ROWS; ++r) sums[r] = acc[r];
}

/// Asks the second-level cache for the @p bytes at @p p (x86 `prefetcht1`), one prefetch per 64-byte
/// line: a hint, no load (never faults), so the memory stream of rows read a few kilobytes later runs
/// ahead of the arithmetic on earlier rows. The lines do not take first-level miss buffers and do not
/// evict the rows being read now from the first-level cache.
inline void prefetch_bytes_to_l2(const void* p, std::size_t bytes) {
  for (std::size_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(static_cast<const char*>(p) + offset, 0, 2);
}

/// `y[i] += a * x[i]` for i < @p count.
inline void add_scaled(float* y, float a, const float* x, index_t count) {
  for (index_t i = 0; i < count; ++i) y[i] += a * x[i];
}

/// Weighted row sums over a run of rows, for ROWS outputs at once: `out[r][i] += weights[r][j] * rows[j][i]`
/// for j < @p count in order and i < @p width, skipping zero weights (a row with a zero weight never
/// reaches the output, even if it holds a NaN). Each element gets exactly the additions of
/// add_scaled() row after row, in the same order; the outputs stay in registers over the run, in
/// blocks of native vectors sized to the register file (AVX-512: 2 x 16 elements of each output; AVX2:
/// 2 x 8), so each row element is loaded once for all ROWS outputs. With one 16-float vector
/// extension per output and AVX2, GCC kept these sums on the stack around the zero-weight branch: the
/// decode step spent ~4x longer here than in its key pass. How many elements a block covers changes no sum.
template <int ROWS>
void weighted_rows(float* const (&out)[ROWS], const float* const (&weights)[ROWS], const float* const* rows, index_t count, index_t width) {
  // Native vectors per output in a block: the most of 4, 2, 1 whose registers (ROWS x parts sums,
  // parts row vectors, one broadcast weight) fit, the block at most 2 * simd_lanes elements.
  constexpr auto fits = [](int parts) { return ROWS * parts + parts + 1 <= vector_registers && parts * native_lanes <= 2 * simd_lanes; };
  constexpr int parts = fits(4) ? 4 : (fits(2) ? 2 : 1);
  constexpr index_t step = parts * native_lanes;
  // Runs without a zero weight (the common case: only masked slots and underflowed exps weigh 0)
  // take the blocks without the test: a compare and branch per weight and block, repeated for every
  // block of the row, cost the decode step ~2x the arithmetic of its value pass (AVX2, perf).
  bool any_zero = false;
  for (int r = 0; r < ROWS; ++r)
    for (index_t j = 0; j < count; ++j) any_zero |= weights[r][j] == 0.0f;
  auto blocks = [&]<bool SkipZero>(std::bool_constant<SkipZero>) {
    index_t i = 0;
    for (; i + step <= width; i += step) {
      native_floats acc[ROWS][parts], x[parts];
      for (int r = 0; r < ROWS; ++r)
        for (int p = 0; p < parts; ++p) std::memcpy(&acc[r][p], out[r] + i + p * native_lanes, sizeof(native_floats));
      for (index_t j = 0; j < count; ++j) {
        for (int p = 0; p < parts; ++p) std::memcpy(&x[p], rows[j] + i + p * native_lanes, sizeof(native_floats));
        for (int r = 0; r < ROWS; ++r) {
          const float w = weights[r][j];
          if (SkipZero && w == 0.0f) continue;
          for (int p = 0; p < parts; ++p) acc[r][p] += w * x[p];
        }
      }
      for (int r = 0; r < ROWS; ++r)
        for (int p = 0; p < parts; ++p) std::memcpy(out[r] + i + p * native_lanes, &acc[r][p], sizeof(native_floats));
    }
    return i;
  };
  const index_t i = any_zero ? blocks(std::true_type{}) : blocks(std::false_type{});
  for (index_t j = 0; j < count && i < width; ++j)
    for (int r = 0; r < ROWS; ++r)
      if (weights[r][j] != 0.0f) add_scaled(out[r] + i, weights[r][j], rows[j] + i, width - i);
}

/// Most query rows of one window-product tile (the vector dimension of the tile).
inline constexpr int tile_rows = 32;
/// Keys of one window-product tile.
inline constexpr int tile_keys = 8;

/// Query rows of the tile that tile_product() holds as one vector per key: tile_keys vectors of 8 floats
/// (eight 256-bit registers) fit every x86-64 and NEON register file. Lane loops leave this shape's
/// accumulators on the stack (GCC 12 unroll-and-jams the dimension loop into the key loop); wider tiles
/// keep the lane loop (as vectors their accumulators no longer fit the registers and spill).
inline constexpr int register_tile_rows = 8;

/// One register-blocked tile of a window product: `acc[k][r] += sum_d keys[k][d] * packed[d][r]` for
/// tile_keys keys and ROWS query rows over @p count dimensions. `packed` holds the queries transposed
/// (`packed[d * ROWS + r]`), so each key element is broadcast against a vector of rows. Every sum runs
/// over d in order, whatever the shape: the register_tile_rows tile writes the same arithmetic with a
/// GCC/Clang vector type (`vector_size`), so its sums stay in registers; the bits are the same.
template <int ROWS>
void tile_product(const float* packed, const float* const (&keys)[tile_keys], index_t count, float (&acc)[tile_keys][ROWS]) {
  if constexpr (ROWS == register_tile_rows) {
    // The size names register_tile_rows, not ROWS: GCC drops the attribute from a dependent alias.
    using rows_vector = float __attribute__((vector_size(register_tile_rows * sizeof(float))));
    static_assert(sizeof(rows_vector) == sizeof(acc[0]), "kvcompact: one vector per key of the tile");
    rows_vector sums[tile_keys];
    std::memcpy(sums, acc, sizeof sums);
    for (index_t d = 0; d < count; ++d) {
      rows_vector q;
      std::memcpy(&q, packed + d * ROWS, sizeof q);
      for (int k = 0; k < tile_keys; ++k) sums[k] += keys[k][d] * q;
    }
    std::memcpy(acc, sums, sizeof sums);
  } else {
    for (index_t d = 0; d < count; ++d) {
      const float* q = packed + d * ROWS;
      for (int k = 0; k < tile_keys; ++k) {
        const float x = keys[k][d];
        for (int r = 0; r < ROWS; ++r) acc[k][r] += x * q[r];
      }
    }
  }
}

/// Softmax statistics of one segment of a logit row.
struct segment_softmax {
  float maximum;         ///< largest visible logit (-infinity when none is visible)
  float sum;             ///< sum of exp(logit - maximum) over the visible entries
  std::int32_t visible;  ///< visible entries
};

/// Masks and exponentiates one segment of a logit row in place: entry i (< @p count) becomes
/// exp(row[i] - max) when `seen(i)`, 0 otherwise, max being the largest visible logit. Lane loops
/// (the sums in one fixed order), so the masking, max, exp and sum vectorise.
template <class Seen>
segment_softmax softmax_segment(float* row, index_t count, const Seen& seen) {
  float maxima[simd_lanes], sums[simd_lanes];
  std::int32_t visible[simd_lanes];
  for (int l = 0; l < simd_lanes; ++l) {
    maxima[l] = -INFINITY;
    sums[l] = 0.0f;
    visible[l] = 0;
  }
  auto mask = [&](index_t i, int l) {
    const bool shown = seen(i);
    row[i] = shown ? row[i] : -INFINITY;
    maxima[l] = row[i] > maxima[l] ? row[i] : maxima[l];
    visible[l] += shown ? 1 : 0;
  };
  index_t i = 0;
  for (; i + simd_lanes <= count; i += simd_lanes)
    for (int l = 0; l < simd_lanes; ++l) mask(i + l, l);
  for (int l = 0; i + l < count; ++l) mask(i + l, l);
  float maximum = -INFINITY;
  std::int32_t shown = 0;
  for (int l = 0; l < simd_lanes; ++l) {
    maximum = maxima[l] > maximum ? maxima[l] : maximum;
    shown += visible[l];
  }
  if (shown == 0) {  // nothing visible: all zero (and no -inf - -inf)
    for (index_t j = 0; j < count; ++j) row[j] = 0.0f;
    return {maximum, 0.0f, 0};
  }
  auto exponentiate = [&](index_t j, int l) {  // masked entries are -inf: exp_approx gives 0
    row[j] = exp_approx(row[j] - maximum);
    sums[l] += row[j];
  };
  for (i = 0; i + simd_lanes <= count; i += simd_lanes)
    for (int l = 0; l < simd_lanes; ++l) exponentiate(i + l, l);
  for (int l = 0; i + l < count; ++l) exponentiate(i + l, l);
  return {maximum, sum_lanes(sums), shown};
}

}  // namespace detail

KVCOMPACT_NAMESPACE_END
