// SPDX-License-Identifier: Apache-2.0
/// @file ops.hpp
/// @brief fp32 kernels of the forward pass: dot products, (batched) matrix
///        products threaded over output rows, RMSNorm, RoPE, SiLU, softmax.
///
/// Every output element of matmul() is produced by the same accumulation order
/// whatever the batch size, so a prefill and a token-by-token decode give
/// bit-identical results (checked by `smollm2_decode --self-check`).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

namespace smollm2::ops {

/// Lanes of independent partial sums in the dot products (vectorises cleanly).
inline constexpr std::size_t lanes = 8;

/// lanes floats as one value (a GCC/Clang vector extension). dot_block() keeps its R x N partial sums
/// in these so they stay in registers: written as a loop over lanes, GCC 12 keeps them on the stack
/// (a load and a store around every multiply-add). Element-wise arithmetic only, so lane l still sums
/// elements l, l + lanes, ... in order, and the multiply-add is contracted as the lane loop's was.
using lane_vector = float __attribute__((vector_size(lanes * sizeof(float))));

/// lane_vector as it is read from float arrays: any float's alignment, and it may alias them. Loads
/// dereference a pointer of this type: a load function would pass the vector by value (an ABI that
/// depends on each translation unit's -march) or by reference (GCC 12 then keeps dot_block's sums on
/// the stack again: 3x slower).
using unaligned_lanes = float __attribute__((vector_size(lanes * sizeof(float)), aligned(alignof(float)), may_alias));

/// @return the lanes floats at @p p (any alignment), as one vector.
inline const unaligned_lanes& lanes_at(const float* p) { return *reinterpret_cast<const unaligned_lanes*>(p); }

/// Computes the R x N dot products of rows @p w[0..R) with rows @p x[0..N) (length @p n each) into
/// out[r][t], in one pass over them: each loaded chunk of a w row meets every x row and vice versa,
/// the R x N lane sums in registers (R = 3, N = 4: 12 vectors of 8 lanes, 7 loads per 12 FMAs). Each
/// output has the same association whatever R and N (lanes in order, then the lanes summed in order).
template <std::size_t R, std::size_t N>
inline void dot_block(const float* const* w, const float* const* x, std::size_t n, float (*out)[N]) {
    lane_vector sums[R][N] = {};
    std::size_t i = 0;
    for (; i + lanes <= n; i += lanes) {
        lane_vector w_lanes[R];
        for (std::size_t r = 0; r < R; ++r) w_lanes[r] = lanes_at(w[r] + i);
        for (std::size_t t = 0; t < N; ++t) {
            const lane_vector x_lanes = lanes_at(x[t] + i);
            for (std::size_t r = 0; r < R; ++r) sums[r][t] += w_lanes[r] * x_lanes;
        }
    }
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t t = 0; t < N; ++t) {
            float acc[lanes];
            std::memcpy(acc, &sums[r][t], sizeof acc);
            for (std::size_t k = i; k < n; ++k) acc[k - i] += w[r][k] * x[t][k];
            float s = 0.0f;
            for (std::size_t l = 0; l < lanes; ++l) s += acc[l];
            out[r][t] = s;
        }
}

/// @return the dot product of @p a and @p b (length @p n), same rounding as dot_block.
inline float dot(const float* a, const float* b, std::size_t n) {
    float r[1][1];
    dot_block<1, 1>(&a, &b, n, r);
    return r[0][0];
}

/// out[i * a_stride + j * b_stride] = dot(a[i], b[j]) for i < @p na, j < @p nb (rows of length @p n):
/// register blocks of 3 a-rows x 4 b-rows (8 a-rows x 1 b-row for the last b-rows), so each a-row is
/// read once per 4 b-rows and each b-row once per 3 (8) a-rows. Same rounding as dot().
inline void dot_tile(const float* const* a, std::size_t na, const float* const* b, std::size_t nb, std::size_t n, float* out,
                     std::size_t a_stride, std::size_t b_stride) {
    auto block = [&]<std::size_t R, std::size_t N>(std::size_t i, std::size_t j) {
        float result[R][N];
        dot_block<R, N>(a + i, b + j, n, result);
        for (std::size_t r = 0; r < R; ++r)
            for (std::size_t k = 0; k < N; ++k) out[(i + r) * a_stride + (j + k) * b_stride] = result[r][k];
    };
    auto all_rows = [&]<std::size_t R, std::size_t N>(std::size_t j) {  // every a-row against the N b-rows from j
        std::size_t i = 0;
        for (; i + R <= na; i += R) block.template operator()<R, N>(i, j);
        for (; i < na; ++i) block.template operator()<1, N>(i, j);
    };
    std::size_t j = 0;
    for (; j + 4 <= nb; j += 4) all_rows.template operator()<3, 4>(j);
    for (; j < nb; ++j) all_rows.template operator()<8, 1>(j);
}

/// y[t][o] = sum_i w[o][i] * x[t][i] for t < tokens; w is [rows][cols] row-major.
/// Parallel over blocks of 16 output rows, each a dot_tile() of its weight rows against all tokens.
inline void matmul(const float* w, std::size_t rows, std::size_t cols, const float* x, std::size_t tokens,
                   float* y) {
    constexpr std::ptrdiff_t row_block = 16;
    const auto n_blocks = static_cast<std::ptrdiff_t>((rows + row_block - 1) / row_block);
    std::vector<const float*> xs(tokens);
    for (std::size_t t = 0; t < tokens; ++t) xs[t] = x + t * cols;
#pragma omp parallel for schedule(static)
    for (std::ptrdiff_t b = 0; b < n_blocks; ++b) {
        const std::size_t r0 = static_cast<std::size_t>(b * row_block);
        const std::size_t r1 = std::min(rows, r0 + row_block);
        const float* ws[row_block];
        for (std::size_t r = r0; r < r1; ++r) ws[r - r0] = w + r * cols;
        dot_tile(ws, r1 - r0, xs.data(), tokens, cols, y + r0, 1, rows);
    }
}

/// out = x / sqrt(mean(x^2) + eps) * weight, for one row of length @p n.
inline void rms_norm(const float* x, const float* weight, std::size_t n, float eps, float* out) {
    double ss = 0.0;
    for (std::size_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
    for (std::size_t i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

/// Rotary embedding tables: cos/sin of position * theta^(-2i/d) for pair i.
class rope_table {
public:
    /// @param head_dim rotated dimension (even); @param theta frequency base.
    rope_table(std::size_t head_dim, double theta) : half_(head_dim / 2), inv_freq_(half_) {
        for (std::size_t i = 0; i < half_; ++i)
            inv_freq_[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    }

    /// Rotates adjacent pairs (x[2i], x[2i+1]) of @p n_heads heads in place for
    /// token position @p position (GGUF "llama" tensors use this pairing).
    void apply(float* x, std::size_t n_heads, long position) const {
        for (std::size_t i = 0; i < half_; ++i) {
            const double angle = static_cast<double>(position) * inv_freq_[i];
            const auto c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
            for (std::size_t h = 0; h < n_heads; ++h) {
                float* p = x + h * 2 * half_ + 2 * i;
                const float a = p[0], b = p[1];
                p[0] = a * c - b * s;
                p[1] = a * s + b * c;
            }
        }
    }

private:
    std::size_t half_;
    std::vector<double> inv_freq_;
};

/// gate[i] = silu(gate[i]) * up[i].
inline void swiglu(float* gate, const float* up, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

/// In-place numerically stable softmax of @p n scores.
inline void softmax(float* s, std::size_t n) {
    if (n == 0) return;
    const float m = *std::max_element(s, s + n);
    float sum = 0.0f;
    for (std::size_t i = 0; i < n; ++i) sum += (s[i] = std::exp(s[i] - m));
    const float inv = 1.0f / sum;
    for (std::size_t i = 0; i < n; ++i) s[i] *= inv;
}

}  // namespace smollm2::ops
