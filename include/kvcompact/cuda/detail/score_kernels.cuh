// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Prefill scoring on the device. Slot scorers: one thread per slot. Attention scorers: the
/// observation window's softmax in two passes over K (statistics, then probabilities reduced over the
/// window rows straight into per-query-head scores), so the window x N attention matrix is never
/// written; then the GQA reduction into per-KV-head scores. Every kernel also flags NaN scores.
#pragma once

#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/prefill_problem.cuh>
#include <kvcompact/cuda/detail/row_loads.cuh>
#include <kvcompact/cuda/detail/window_logits.cuh>
#include <kvcompact/cuda/detail/workspace.cuh>
#include <kvcompact/detail/slot_ops.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Threads per block of the prefill kernels.
inline constexpr int prefill_threads = 256;
/// Keys per tile of the window kernels.
inline constexpr int window_tile = logit_tile_keys;

/// Window rows a window-kernel block holds in shared memory at once.
KVCOMPACT_HOST_DEVICE inline index_t window_rows_per_pass(index_t head_dim) { return head_dim <= 128 ? 32 : 16; }

/// Bytes of the query and key operands of a window-kernel block (tensor-core or FMA layout).
template <class T>
KVCOMPACT_HOST_DEVICE inline index_t window_operand_bytes(index_t head_dim) {
  const index_t rows = window_rows_per_pass(head_dim);
  if (uses_tensor_cores<T>(head_dim)) return (2 * rows + window_tile) * mma_stride(head_dim) * static_cast<index_t>(sizeof(T));
  return (rows * head_dim + window_tile * (head_dim + 1)) * static_cast<index_t>(sizeof(float));
}

/// Dynamic shared memory of the window kernels, in bytes.
template <class T>
inline std::size_t window_shared_bytes(index_t head_dim) {
  const index_t rows = window_rows_per_pass(head_dim);
  return static_cast<std::size_t>(window_operand_bytes<T>(head_dim)) + static_cast<std::size_t>(rows * window_tile + 3 * rows) * sizeof(float) +
         static_cast<std::size_t>(rows) * sizeof(std::int32_t) + window_tile * (sizeof(index_t) + sizeof(std::int32_t));
}

/// Records a NaN score of a layer: reported, and the layer is left as it is.
template <class T, class Layout, class State>
__device__ void flag_nan(const prefill_problem<T, Layout, State>& p, index_t s, index_t l, index_t h, index_t slot) {
  report(p.status, device_fault::nan_score, s, l, h, slot);
  atomicExch(&p.layer_faults[s * p.layers() + l], 1);
}

/// Grid (Hkv, S x L): clears keep flags and merge targets, computes each head's slots in position
/// order (identity when they already are, else by counting) and each layer's newest position.
template <class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) prepare_kernel(prefill_problem<T, Layout, State> p) {
  const index_t h = blockIdx.x, s = blockIdx.y / p.layers(), l = blockIdx.y % p.layers();
  const index_t capacity = p.cache.layout.capacity();
  const index_t base = p.head_base(s, l, h);
  const std::int32_t raw = p.cache.lengths[p.cache.head_index(s, l, h)];
  if (raw < 0 || raw > capacity) {
    if (threadIdx.x == 0) {
      report(p.status, device_fault::bad_length, s, l, h, raw);
      atomicExch(&p.layer_faults[s * p.layers() + l], 1);
    }
    return;
  }
  const index_t n = raw;
  const std::int32_t* positions = p.cache.positions + base;
  int sorted = 1;
  std::int32_t newest = 0;
  for (index_t j = threadIdx.x; j < n; j += blockDim.x) {
    p.keep[base + j] = 0;
    p.targets[base + j] = -1;
    if (j + 1 < n && positions[j] >= positions[j + 1]) sorted = 0;
    newest = positions[j] > newest ? positions[j] : newest;
  }
  sorted = __syncthreads_and(sorted);
  for (index_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (sorted) {
      p.order[base + j] = static_cast<std::int32_t>(j);
    } else {  // rank = slots before it in (position, slot) order: a permutation even with equal positions
      index_t rank = 0;
      for (index_t i = 0; i < n; ++i) rank += positions[i] < positions[j] || (positions[i] == positions[j] && i < j);
      p.order[base + rank] = static_cast<std::int32_t>(j);
    }
  }
  atomicMax(&p.step[s * p.layers() + l], newest);
  if (threadIdx.x == 0) p.order_ready[p.cache.head_index(s, l, h)] = 1;
}

/// The (sequence, layer, KV head, slot) of a thread in a (slot tiles, Hkv, S x L) grid; `valid` is
/// false past the head's length.
struct slot_thread {
  index_t s, l, h, j;  ///< sequence, layer, KV head, slot
  bool valid;          ///< the slot holds a token
};

template <class T, class Layout, class State>
__device__ slot_thread slot_of_thread(const prefill_problem<T, Layout, State>& p) {
  slot_thread t{blockIdx.z / p.layers(), blockIdx.z % p.layers(), blockIdx.y, static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x, false};
  t.valid = t.j < p.cache.lengths[p.cache.head_index(t.s, t.l, t.h)] && t.j < p.cache.layout.capacity();
  return t;
}

/// Grid (slot tiles, Hkv, S x L): scores of slot scorers (key and position), copied to the query
/// heads of the group as the CPU backend does.
template <class Policy, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) slot_score_kernel(prefill_problem<T, Layout, State> p, Policy policy) {
  const auto [s, l, h, j, valid] = slot_of_thread(p);
  if (!valid) return;
  const index_t capacity = p.cache.layout.capacity();
  if (checked_offset(p.cache.layout, s, l, h, j, p.status) < 0) {
    atomicExch(&p.layer_faults[s * p.layers() + l], 1);
    return;
  }
  const float score = ::kvcompact::detail::slot_score(policy, p.cache, s, l, h, j);
  if (isnan(score)) flag_nan(p, s, l, h, j);
  p.scores[p.head_base(s, l, h) + j] = score;
  const index_t group = p.query_heads / p.cache.layout.num_kv_heads();
  for (index_t g = h * group; g < (h + 1) * group; ++g) p.query_scores[((s * p.layers() + l) * p.query_heads + g) * capacity + j] = score;
}

/// Shared-memory carve-up and the steps both window passes share.
template <class T, class Layout, class State>
struct window_block {
  const prefill_problem<T, Layout, State>& p;
  index_t s, l, h, dims, group, rows_total, per_pass;
  bool tensor_cores;         ///< logits on tensor cores (fp16 / bf16, head_dim a multiple of 16)
  float* q = nullptr;        ///< FMA: [per_pass][D] query rows
  float* k = nullptr;        ///< FMA: [tile][D + 1] key tile
  T* q_high = nullptr;       ///< tensor cores: [per_pass][mma_stride] high parts of the query rows
  T* q_low = nullptr;        ///< tensor cores: [per_pass][mma_stride] low parts
  T* k_raw = nullptr;        ///< tensor cores: [tile][mma_stride] key tile as stored
  float* logit;              ///< [per_pass][tile]
  float* row_a;              ///< [per_pass] running max (pass 1) / combined max (pass 2)
  float* row_b;              ///< [per_pass] running sum / combined sum
  float* row_c;              ///< [per_pass] visible keys
  std::int32_t* query_pos;   ///< [per_pass]
  index_t* key_offset;       ///< [tile]
  std::int32_t* key_pos;     ///< [tile]

  __device__ window_block(const prefill_problem<T, Layout, State>& problem, unsigned char* shared)
      : p(problem), s(blockIdx.z / problem.layers()), l(blockIdx.z % problem.layers()), h(blockIdx.y) {
    dims = p.cache.layout.head_dim();
    group = p.query_heads / p.cache.layout.num_kv_heads();
    rows_total = group * p.window.rows;
    per_pass = window_rows_per_pass(dims);
    tensor_cores = uses_tensor_cores<T>(dims);
    if (tensor_cores) {
      const index_t operand = per_pass * mma_stride(dims);
      q_high = reinterpret_cast<T*>(shared);
      q_low = q_high + operand;
      k_raw = q_low + operand;
    } else {
      q = reinterpret_cast<float*>(shared);
      k = q + per_pass * dims;
    }
    logit = reinterpret_cast<float*>(shared + window_operand_bytes<T>(dims));
    row_a = logit + per_pass * window_tile;
    row_b = row_a + per_pass;
    row_c = row_b + per_pass;
    query_pos = reinterpret_cast<std::int32_t*>(row_c + per_pass);
    key_offset = reinterpret_cast<index_t*>(query_pos + per_pass);
    key_pos = reinterpret_cast<std::int32_t*>(key_offset + window_tile);
  }
  /// Window row `first + r` belongs to query head `group index (first + r) / rows` of this KV head.
  __device__ void load_queries(index_t first, index_t count) const {
    const index_t rows = p.window.rows;
    for (index_t i = threadIdx.x; i < count * dims; i += blockDim.x) {
      const index_t r = i / dims, d = i % dims, row = first + r, g = h * group + row / rows;
      const float x = p.window.queries[p.window.offset(s, l, g, row % rows, p.layers(), p.query_heads, dims) + d];
      if (tensor_cores) split_query(x, q_high[r * mma_stride(dims) + d], q_low[r * mma_stride(dims) + d]);
      else q[i] = x;
    }
    for (index_t r = threadIdx.x; r < count; r += blockDim.x) query_pos[r] = p.window.positions[s * rows + (first + r) % rows];
  }
  /// Loads keys [first, first + n) and fills `logit[r][j]` with the scaled logit of window row r on
  /// key j, or -inf where the key is not visible to the row (later position or outside storage).
  __device__ void logits(index_t first, index_t n, index_t rows) const {
    const index_t base = p.head_base(s, l, h), stride = p.cache.layout.dim_stride();
    for (index_t j = threadIdx.x; j < window_tile; j += blockDim.x) {
      key_offset[j] = j < n ? checked_offset(p.cache.layout, s, l, h, first + j, p.status) : -1;
      key_pos[j] = j < n ? p.cache.positions[base + first + j] : 0;
    }
    __syncthreads();
    const int width = static_cast<int>(row_chunk<T>(stride, dims)), chunks_per_row = static_cast<int>(dims) / width;
    for (int i = threadIdx.x; i < window_tile * chunks_per_row; i += blockDim.x) {
      const int j = i / chunks_per_row, d = i % chunks_per_row * width;
      if (tensor_cores) copy_row_chunk(p.cache.keys, key_offset[j], d, stride, width, k_raw + j * mma_stride(dims) + d);
      else load_row_chunk(p.cache.keys, key_offset[j], d, stride, width, k + j * (dims + 1) + d);
    }
    __syncthreads();
    if constexpr (!std::is_void_v<typename mma_element<T>::type>) {
      if (tensor_cores) {
        mma_tile_logits(q_high, q_low, k_raw, rows, dims, logit);
        __syncthreads();
      }
    }
    for (int i = threadIdx.x; i < rows * window_tile; i += blockDim.x) {
      const int r = i / window_tile, j = i % window_tile;
      float value = -INFINITY;
      if (j < n && key_offset[j] >= 0 && key_pos[j] <= query_pos[r]) {
        float dot = 0.0f;
        if (tensor_cores) {
          dot = logit[i];
        } else {
          for (int d = 0; d < dims; ++d) dot += q[r * dims + d] * k[j * (dims + 1) + d];
        }
        value = dot * p.scale;
      }
      logit[i] = value;
    }
    __syncthreads();
  }
  /// Index of a window statistic: [S][L][Hkv][3][rows][chunks].
  __device__ index_t stat(index_t which, index_t row, index_t chunk) const {
    return ((p.cache.head_index(s, l, h) * 3 + which) * rows_total + row) * p.chunks + chunk;
  }
};

/// Pass 1, grid (key chunks, Hkv, S x L): per window row and key chunk, the softmax maximum, sum
/// and visible-key count over the chunk.
template <class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) window_statistics_kernel(prefill_problem<T, Layout, State> p) {
  KVCOMPACT_DYNAMIC_SHARED(unsigned char, shared);
  const window_block<T, Layout, State> b(p, shared);
  const index_t chunk = blockIdx.x;
  const index_t n = p.cache.lengths[p.cache.head_index(b.s, b.l, b.h)];
  const index_t begin = chunk * window_key_chunk;
  const index_t end = begin + window_key_chunk < n ? begin + window_key_chunk : n;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (index_t first = 0; first < b.rows_total; first += b.per_pass) {
    const index_t rows = b.rows_total - first < b.per_pass ? b.rows_total - first : b.per_pass;
    b.load_queries(first, rows);
    for (index_t r = threadIdx.x; r < rows; r += blockDim.x) {
      b.row_a[r] = -INFINITY;
      b.row_b[r] = 0.0f;
      b.row_c[r] = 0.0f;
    }
    __syncthreads();
    for (index_t tile = begin; tile < end; tile += window_tile) {
      b.logits(tile, end - tile < window_tile ? end - tile : window_tile, rows);
      for (index_t r = warp; r < rows; r += blockDim.x / 32) {
        const float x = b.logit[r * window_tile + lane];
        float tile_max = x;
        for (int o = 16; o > 0; o /= 2) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
        const float old_max = b.row_a[r], new_max = fmaxf(old_max, tile_max);
        float e = x == -INFINITY ? 0.0f : expf(x - new_max);
        for (int o = 16; o > 0; o /= 2) e += __shfl_xor_sync(0xffffffffu, e, o);
        const unsigned visible = __ballot_sync(0xffffffffu, x != -INFINITY);
        __syncwarp();  // every lane has read row_a[r] before lane 0 overwrites it
        if (lane == 0) {
          b.row_b[r] = b.row_b[r] * (old_max == -INFINITY ? 0.0f : expf(old_max - new_max)) + e;
          b.row_a[r] = new_max;
          b.row_c[r] += static_cast<float>(__popc(visible));
        }
      }
      __syncthreads();
    }
    for (index_t r = threadIdx.x; r < rows; r += blockDim.x) {
      p.stats[b.stat(0, first + r, chunk)] = b.row_a[r];
      p.stats[b.stat(1, first + r, chunk)] = b.row_b[r];
      p.stats[b.stat(2, first + r, chunk)] = b.row_c[r];
    }
    __syncthreads();
  }
}

/// Pass 2, grid (key chunks, Hkv, S x L): recomputes the chunk's logits, turns them into
/// probabilities with the rows' combined statistics, applies the scorer's row term and reduces over
/// the window rows of each query head in row order (as the CPU backend does), into query_scores.
template <class Scorer, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) window_scores_kernel(prefill_problem<T, Layout, State> p, Scorer scorer) {
  KVCOMPACT_DYNAMIC_SHARED(unsigned char, shared);
  const window_block<T, Layout, State> b(p, shared);
  const index_t chunk = blockIdx.x, capacity = p.cache.layout.capacity();
  const index_t n = p.cache.lengths[p.cache.head_index(b.s, b.l, b.h)];
  const index_t begin = chunk * window_key_chunk;
  const index_t chunk_end = begin + window_key_chunk < capacity ? begin + window_key_chunk : capacity;
  const index_t end = chunk_end < n ? chunk_end : n;
  float* scores = p.query_scores + ((b.s * p.layers() + b.l) * p.query_heads + b.h * b.group) * capacity;  // [G][capacity]
  for (index_t i = threadIdx.x; i < b.group * (chunk_end - begin); i += blockDim.x)
    scores[(i / (chunk_end - begin)) * capacity + begin + i % (chunk_end - begin)] = ::kvcompact::detail::reduction_identity(scorer.rows);
  __syncthreads();
  const index_t rows_per_head = p.window.rows;
  for (index_t first = 0; first < b.rows_total; first += b.per_pass) {
    const index_t rows = b.rows_total - first < b.per_pass ? b.rows_total - first : b.per_pass;
    b.load_queries(first, rows);
    for (index_t r = threadIdx.x; r < rows; r += blockDim.x) {
      float m = -INFINITY, sum = 0.0f, visible = 0.0f;
      for (index_t c = 0; c < p.chunks; ++c) m = fmaxf(m, p.stats[b.stat(0, first + r, c)]);
      for (index_t c = 0; c < p.chunks; ++c) {
        const float mc = p.stats[b.stat(0, first + r, c)];
        if (mc != -INFINITY) sum += p.stats[b.stat(1, first + r, c)] * expf(mc - m);
        visible += p.stats[b.stat(2, first + r, c)];
      }
      b.row_a[r] = m;
      b.row_b[r] = sum;
      b.row_c[r] = visible;
    }
    __syncthreads();
    for (index_t tile = begin; tile < end; tile += window_tile) {
      const index_t count = end - tile < window_tile ? end - tile : window_tile;
      b.logits(tile, count, rows);
      if (threadIdx.x < count) {
        const index_t j = threadIdx.x;
        index_t current = -1;
        float acc = 0.0f;
        for (index_t r = 0; r < rows; ++r) {
          const float x = b.logit[r * window_tile + j];
          if (x == -INFINITY) continue;
          const index_t g = (first + r) / rows_per_head;
          if (g != current) {
            if (current >= 0) scores[current * capacity + tile + j] = acc;
            current = g;
            acc = scores[g * capacity + tile + j];
          }
          const float probability = expf(x - b.row_a[r]) / b.row_b[r];
          acc = ::kvcompact::detail::reduction_combine(
              scorer.rows, acc, scorer.row_term(probability, static_cast<index_t>(b.row_c[r]), b.query_pos[r]));
        }
        if (current >= 0) scores[current * capacity + tile + j] = acc;
      }
      __syncthreads();
    }
  }
  for (index_t i = threadIdx.x; i < b.group * (end - begin); i += blockDim.x) {
    float& value = scores[(i / (end - begin)) * capacity + begin + i % (end - begin)];
    value = ::kvcompact::detail::reduction_finish(scorer.rows, value, static_cast<int>(rows_per_head));
  }
}

/// Grid (slot tiles, Hkv, S x L): per-KV-head scores, the scorer's group reduction of the query
/// heads' scores (all query heads when it shares scores across KV heads), in query-head order.
template <class Scorer, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) group_scores_kernel(prefill_problem<T, Layout, State> p, Scorer scorer) {
  const auto [s, l, h, j, valid] = slot_of_thread(p);
  if (!valid) return;
  const index_t capacity = p.cache.layout.capacity();
  const index_t group = p.query_heads / p.cache.layout.num_kv_heads();
  const index_t first = Scorer::shares_across_kv_heads ? 0 : h * group;
  const index_t count = Scorer::shares_across_kv_heads ? p.query_heads : group;
  const float* scores = p.query_scores + (s * p.layers() + l) * p.query_heads * capacity;
  float acc = ::kvcompact::detail::reduction_identity(scorer.group);
  for (index_t g = first; g < first + count; ++g) acc = ::kvcompact::detail::reduction_combine(scorer.group, acc, scores[g * capacity + j]);
  const float score = ::kvcompact::detail::reduction_finish(scorer.group, acc, static_cast<int>(count));
  if (isnan(score)) flag_nan(p, s, l, h, j);
  p.scores[p.head_base(s, l, h) + j] = score;
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
