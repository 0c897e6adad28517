// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Split-KV decode attention. One block per (split, KV head, sequence) streams its share of K
/// and V through a multi-stage cp.async pipeline, keeping the tiles in their storage type in shared
/// memory, and serves every query head of the GQA group from that one read; the last block of a head
/// to finish combines the splits into the output (no second kernel). When the scorer needs attention
/// the pass also writes each slot's log2-domain logits and the head's softmax maximum and sum, which
/// decode_update_kernel turns into state updates.
///
/// Thread layout: a "team" of lanes reads one K or V row, each lane one or two 16-byte chunks; every
/// lane keeps the queries of the whole group for its dimensions in registers, so a row read from
/// shared memory once feeds all G heads. A team handles `rows_per_team` rows per tile with its own
/// online softmax (max, sum, output), merged across teams once per block. Row reads sweep contiguous
/// 16-byte chunks, so shared memory needs neither padding nor swizzling to be free of bank conflicts.
#pragma once

#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/last_block.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/ptx_convert.cuh>
#include <kvcompact/cuda/detail/ptx_cp_async.cuh>
#include <kvcompact/cuda/detail/ptx_grid_dependency.cuh>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/layouts/layer_condensed.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Threads per block of the decode attention kernel.
inline constexpr int decode_threads = 128;
/// Most query heads one block serves (larger groups are split into chunks of this many).
inline constexpr int decode_max_group = 8;

/// Shared memory of one multiprocessor of compute capability @p arch (x 10), in bytes.
KVCOMPACT_HOST_DEVICE constexpr int shared_bytes_per_multiprocessor(int arch) {
  return (arch >= 90 ? 228 : arch == 80 || arch == 87 ? 164 : 100) * 1024;
}

/// Design occupancy of decode_attention_kernel, in blocks per multiprocessor, for @p group query
/// heads per block and @p shared_bytes of shared memory per block on compute capability @p arch
/// (x 10): registers allow three blocks of up to four heads (at most 168 registers per thread) and
/// two of eight; shared memory (1 KiB reserved per block) may allow fewer (two on an A100, one or
/// two for fp32 rows of 256).
KVCOMPACT_HOST_DEVICE constexpr int decode_design_blocks(int group, int shared_bytes, int arch) {
  const int by_registers = group <= 4 ? 3 : 2;
  const int by_shared = shared_bytes_per_multiprocessor(arch) / (shared_bytes + 1024);
  return by_shared < 1 ? 1 : (by_shared < by_registers ? by_shared : by_registers);
}

#if defined(__CUDA_ARCH__)
/// The architecture being compiled (x 10), for the design occupancy.
inline constexpr int decode_target_arch = __CUDA_ARCH__ / 10;
#else
/// The architecture being compiled (x 10), for the design occupancy (host passes: Hopper's).
inline constexpr int decode_target_arch = 90;
#endif

/// Base-2 logarithm of a power of two.
KVCOMPACT_HOST_DEVICE constexpr int log2_exact(int n) { return n <= 1 ? 0 : 1 + log2_exact(n / 2); }

/// Compile-time shape of the decode attention kernel for element @p T, head dimension @p HeadDim
/// (64, 128 or 256; smaller head dimensions run zero-padded) and @p Group query heads per block
/// (1, 2, 4 or 8; smaller groups run with empty heads).
template <class T, int HeadDim, int Group>
struct decode_shape {
  static constexpr int vector = elements_per_chunk<T>;                  ///< elements per 16-byte chunk
  static constexpr int chunks = HeadDim / vector;                       ///< 16-byte chunks per row
  static constexpr int team = chunks < 32 ? chunks : 32;                ///< lanes reading one row
  static constexpr int chunks_per_lane = chunks / team;                 ///< 16-byte chunks per lane and row
  static constexpr int dims_per_lane = chunks_per_lane * vector;        ///< dimensions a lane owns
  static constexpr int teams = decode_threads / team;                   ///< teams per block
  static constexpr int rows_per_team = 4;                               ///< rows a team handles per tile
  static constexpr int tile = teams * rows_per_team;                    ///< rows per pipeline stage
  static constexpr int row_bytes = HeadDim * static_cast<int>(sizeof(T));
  static constexpr int stage_bytes = 2 * tile * row_bytes;              ///< K and V tiles of one stage
  static constexpr int stages = stage_bytes > 16384 ? 3 : 4;            ///< pipeline depth (3 stages in flight)
  static constexpr int kv_bytes = stages * stage_bytes;                 ///< the pipeline's shared memory
  static constexpr int describe_slots = stages + 1;                     ///< tiles whose rows are described at once
  static constexpr int scores = Group * rows_per_team;                  ///< logits a team computes per tile
  static constexpr int copies_per_thread = tile * chunks / decode_threads;  ///< 16-byte copies per thread, tile and tensor
  /// Bytes of dynamic shared memory.
  static constexpr int shared_bytes = kv_bytes + describe_slots * tile * 8 + 2 * teams * scores * 4 + 16;

  static_assert(HeadDim % vector == 0 && chunks % team == 0 && decode_threads % team == 0, "kvcompact: decode_shape: bad head dimension");
  static_assert(copies_per_thread * decode_threads == tile * chunks, "kvcompact: decode_shape: copies do not divide among the threads");
  static_assert(tile <= decode_threads, "kvcompact: decode_shape: a tile has more rows than the block has threads");
  static_assert(teams * Group * (HeadDim + 2) * 4 <= kv_bytes, "kvcompact: decode_shape: the team merge does not fit the pipeline's memory");
};

/// Everything one decode step of one layer reads and writes (device pointers).
template <class T, class Layout>
struct decode_problem {
  kv_cache<T, Layout> cache;              ///< the cache (device arrays)
  index_t storage_layer;                  ///< storage layer holding the keys
  index_t model_layer;                    ///< layer that attends (visibility rule)
  int query_heads;                        ///< query heads
  int group;                              ///< query heads per KV head
  int head_dim;                           ///< head dimension
  int splits;                             ///< blocks per head and head chunk
  int head_chunks;                        ///< blocks per (split, head): the group in chunks of decode_max_group
  bool vector_rows;                       ///< rows may be copied in 16-byte chunks (unit dimension stride, aligned storage)
  float scale_log2;                       ///< logit scale times log2(e)
  const T* queries;                       ///< [S][Hq][D]
  const std::int32_t* query_positions;    ///< [S]; a negative position skips the sequence
  T* output;                              ///< [S][Hq][D], or null (observe)
  float* logits;                          ///< [S][Hkv][capacity][G] log2-domain logits, or null (no scoring)
  float* partial_out;                     ///< [S][Hq][splits][D] unnormalised partial outputs
  float* partial_max;                     ///< [S][Hq][splits] partial maxima (log2 domain)
  float* partial_sum;                     ///< [S][Hq][splits] partial sums
  std::int32_t* partial_count;            ///< [S][Hkv][splits] visible keys per split
  float* head_max;                        ///< [S][Hq] softmax maximum of each query head (log2 domain)
  float* head_sum;                        ///< [S][Hq] softmax sum of each query head
  std::int32_t* head_visible;             ///< [S][Hkv] keys each query of a head attended
  std::int32_t* arrivals;                 ///< [S][Hkv] blocks done (0 between launches)
  device_status* status;                  ///< fault record
};

/// Sums @p Count values over the @p Team lanes of each team and scatters the results: afterwards lane
/// `l` of a team holds `per_lane` of the sums, those of indices `index_base(l) + i`. Each halving step
/// sends half of the remaining values to the partner lane, so the whole reduction costs about
/// Count shuffles instead of Count x log2(Team). With fewer values than lanes the last steps are plain
/// butterfly sums, and `replicas` lanes hold the same index (only the primary one writes it).
template <int Team, int Count>
struct team_reduce_scatter {
  static constexpr int levels = log2_exact(Team);                             ///< butterfly levels
  static constexpr int halvings = levels < log2_exact(Count) ? levels : log2_exact(Count);  ///< levels that halve the values
  static constexpr int per_lane = Count >> halvings;                           ///< sums a lane ends with
  static constexpr int replicas = Team >> halvings;                            ///< lanes holding the same sums

  /// Reduces @p values (on return only the first per_lane entries matter) over the team of @p lane.
  __device__ static void run(float (&values)[Count], int lane) { step<Team / 2, Count>(values, lane); }

  /// Index of the first sum lane @p lane holds.
  KVCOMPACT_HOST_DEVICE static int index_base(int lane) {
    int base = 0;
    for (int level = 0; level < halvings; ++level)
      if (lane & (Team >> (level + 1))) base += Count >> (level + 1);
    return base;
  }
  /// Whether @p lane is the one of its replicas that writes its sums.
  KVCOMPACT_HOST_DEVICE static bool primary(int lane) { return (lane & (replicas - 1)) == 0; }

 private:
  template <int Offset, int Remaining>
  __device__ static void step(float (&values)[Count], int lane) {
    if constexpr (Offset >= 1) {
      if constexpr (Remaining > 1) {
        const bool upper = (lane & Offset) != 0;
KVCOMPACT_UNROLL
        for (int i = 0; i < Remaining / 2; ++i) {
          const float low = values[i], high = values[i + Remaining / 2];
          values[i] = (upper ? high : low) + __shfl_xor_sync(0xffffffffu, upper ? low : high, Offset);
        }
        step<Offset / 2, Remaining / 2>(values, lane);
      } else {
        values[0] += __shfl_xor_sync(0xffffffffu, values[0], Offset);
        step<Offset / 2, 1>(values, lane);
      }
    }
  }
};

/// Entry @p index of a register array, with compile-time indexing only (no local-memory copy).
template <int N>
__device__ inline float pick(const float (&values)[N], int index) {
  float out = values[0];
KVCOMPACT_UNROLL
  for (int i = 1; i < N; ++i) out = index == i ? values[i] : out;
  return out;
}

/// Writes the 16-byte chunk @p chunk of the row at element @p offset to @p destination element by
/// element (layouts whose rows are not 16-byte copyable); dimensions past @p head_dim read as zero.
template <class T>
__device__ inline void copy_chunk_by_element(const T* data, index_t offset, int chunk, index_t dim_stride, int head_dim, void* destination) {
  constexpr int vector = elements_per_chunk<T>;
  T items[vector];
KVCOMPACT_UNROLL
  for (int e = 0; e < vector; ++e) {
    const int d = chunk * vector + e;
    items[e] = d < head_dim ? data[offset + d * dim_stride] : T{};
  }
  uint4 bits;
  std::memcpy(&bits, items, 16);
  *static_cast<uint4*>(destination) = bits;
}

/// Grid (splits x head chunks, KV heads, sequences), decode_threads threads, decode_shape's shared
/// memory. Attends rows [begin, end) of the head (its split of the visible keys) with the block's
/// chunk of the group, leaves the block's partial output, maximum and sum, and, in the last block of
/// the head to finish, combines all splits: output, per-query-head maximum and sum, visible keys.
template <class T, class Layout, int HeadDim, int Group>
KVCOMPACT_KERNEL void __launch_bounds__(decode_threads, decode_design_blocks(Group, decode_shape<T, HeadDim, Group>::shared_bytes, decode_target_arch))
    decode_attention_kernel(const decode_problem<T, Layout> p) {
  using shape = decode_shape<T, HeadDim, Group>;
  using reducer = team_reduce_scatter<shape::team, shape::scores>;
  constexpr int vector = shape::vector, tile = shape::tile, rows_per_team = shape::rows_per_team;
  KVCOMPACT_DYNAMIC_SHARED(unsigned char, shared);
  const index_t query_position = p.query_positions[blockIdx.z];
  if (query_position < 0) return;
  const int s = static_cast<int>(blockIdx.z), h = static_cast<int>(blockIdx.y);
  const int chunk = static_cast<int>(blockIdx.x) % p.head_chunks, split = static_cast<int>(blockIdx.x) / p.head_chunks;
  const Layout& layout = p.cache.layout;
  const int capacity = static_cast<int>(layout.capacity()), kv_heads = static_cast<int>(layout.num_kv_heads());
  const index_t head = p.cache.head_index(s, p.storage_layer, h);
  const index_t layer_slots = ::kvcompact::detail::layer_capacity(layout, p.storage_layer);  // below capacity in ragged layouts
  const int length = static_cast<int>(checked_length(p.cache.lengths[head], layer_slots, p.status, s, p.storage_layer, h));
  const int rows_per_split = (((length + p.splits - 1) / p.splits + tile - 1) / tile) * tile;
  const int begin = split * rows_per_split < length ? split * rows_per_split : length;
  const int end = begin + rows_per_split < length ? begin + rows_per_split : length;
  const int tiles = (end - begin + tile - 1) / tile;
  const int first_head = chunk * Group;  // of the group
  const int heads_here = p.group - first_head < Group ? p.group - first_head : Group;
  const index_t first_query = static_cast<index_t>(s) * p.query_heads + static_cast<index_t>(h) * p.group + first_head;

  unsigned char* kv = shared;                                                    // [stage][K tile | V tile]
  auto* row_offset = reinterpret_cast<index_t*>(shared + shape::kv_bytes);       // [describe slot][tile], -1: not read
  float* team_scores = reinterpret_cast<float*>(row_offset + shape::describe_slots * tile);  // [team][scores]
  float* team_probabilities = team_scores + shape::teams * shape::scores;       // [team][scores]
  auto* visible_rows = reinterpret_cast<std::int32_t*>(team_probabilities + shape::teams * shape::scores);  // rows the block read

  const int tid = static_cast<int>(threadIdx.x);
  const int team = tid / shape::team, lane = tid % shape::team;
  const int valid_chunks = (p.head_dim + vector - 1) / vector;

  // Queries of the block's heads for this lane's dimensions, scaled into the log2 domain.
  float q[Group][shape::dims_per_lane];
KVCOMPACT_UNROLL
  for (int g = 0; g < Group; ++g)
KVCOMPACT_UNROLL
    for (int c = 0; c < shape::chunks_per_lane; ++c)
KVCOMPACT_UNROLL
      for (int e = 0; e < vector; ++e) {
        const int d = (c * shape::team + lane) * vector + e;
        q[g][c * vector + e] =
            g < heads_here && d < p.head_dim ? element_to_float(p.queries[(first_query + g) * p.head_dim + d]) * p.scale_log2 : 0.0f;
      }
  // Chunks past the head dimension are never copied: zero them once (queries are zero there too).
  for (int i = tid; i < shape::stages * 2 * tile * shape::chunks; i += decode_threads)
    if (i % shape::chunks >= valid_chunks) *reinterpret_cast<uint4*>(kv + i * 16) = uint4{0, 0, 0, 0};
  if (tid == 0) *visible_rows = 0;

  // Row descriptors (element offset of each row, -1 when not read) of tile t.
  int visible = 0;
  auto describe = [&](int t) {
    if (tid < tile) {
      const int slot = begin + t * tile + tid;
      index_t offset = -1;
      if (slot < end) {
        const index_t key_position = p.cache.positions[head * capacity + slot];
        if (::kvcompact::detail::attends(layout, p.model_layer, key_position, query_position))
          offset = checked_offset(layout, s, p.storage_layer, h, slot, p.status);
      }
      row_offset[(t % shape::describe_slots) * tile + tid] = offset;
      visible += offset >= 0 ? 1 : 0;
    }
  };
  // Starts the copies of tile t into its stage; always commits one group (empty past the last tile).
  // observe() needs no output, hence no values.
  const index_t dim_stride = layout.dim_stride();
  const bool reads_values = p.output != nullptr;
  auto issue = [&](int t) {
    if (t < tiles) {
      unsigned char* k_tile = kv + (t % shape::stages) * shape::stage_bytes;
      const index_t* offsets = row_offset + (t % shape::describe_slots) * tile;
KVCOMPACT_UNROLL
      for (int i = 0; i < shape::copies_per_thread; ++i) {
        const int index = tid + i * decode_threads;
        const int row = index / shape::chunks, c = index % shape::chunks;
        const index_t offset = offsets[row];
        if (offset < 0 || c >= valid_chunks) continue;
        unsigned char* k_to = k_tile + row * shape::row_bytes + c * 16;
        unsigned char* v_to = k_to + tile * shape::row_bytes;
        if (p.vector_rows && offset % vector == 0) {
          cp_async_16(k_to, p.cache.keys + offset + c * vector);
          if (reads_values) cp_async_16(v_to, p.cache.values + offset + c * vector);
        } else {
          copy_chunk_by_element(p.cache.keys, offset, c, dim_stride, p.head_dim, k_to);
          if (reads_values) copy_chunk_by_element(p.cache.values, offset, c, dim_stride, p.head_dim, v_to);
        }
      }
    }
    cp_async_commit();
  };

  for (int t = 0; t < shape::stages - 1; ++t) describe(t);
  __syncthreads();
  for (int t = 0; t < shape::stages - 1; ++t) issue(t);
  describe(shape::stages - 1);

  float running_max[Group], running_sum[Group], out[Group][shape::dims_per_lane];
KVCOMPACT_UNROLL
  for (int g = 0; g < Group; ++g) {
    running_max[g] = -INFINITY;
    running_sum[g] = 0.0f;
KVCOMPACT_UNROLL
    for (int i = 0; i < shape::dims_per_lane; ++i) out[g][i] = 0.0f;
  }
  float* my_scores = team_scores + team * shape::scores;
  float* my_probabilities = team_probabilities + team * shape::scores;
  const int base = reducer::index_base(lane);
  const bool primary = reducer::primary(lane);

  for (int t = 0; t < tiles; ++t) {
    cp_async_wait<shape::stages - 2>();  // this thread's copies of tile t have landed
    __syncthreads();                     // everyone's have; the stage of tile t - 1 is free
    issue(t + shape::stages - 1);
    describe(t + shape::stages);
    const unsigned char* k_tile = kv + (t % shape::stages) * shape::stage_bytes;
    const unsigned char* v_tile = k_tile + tile * shape::row_bytes;
    const index_t* offsets = row_offset + (t % shape::describe_slots) * tile;

    // Logits of the team's rows for every head: per-lane partial dot products, then one
    // reduce-scatter over the team.
    float partial[shape::scores];
KVCOMPACT_UNROLL
    for (int i = 0; i < shape::scores; ++i) partial[i] = 0.0f;
KVCOMPACT_UNROLL
    for (int r = 0; r < rows_per_team; ++r) {
      const int row = team * rows_per_team + r;
KVCOMPACT_UNROLL
      for (int c = 0; c < shape::chunks_per_lane; ++c) {
        float k[vector];
        unpack_chunk<T>(*reinterpret_cast<const uint4*>(k_tile + row * shape::row_bytes + (c * shape::team + lane) * 16), k);
KVCOMPACT_UNROLL
        for (int g = 0; g < Group; ++g)
KVCOMPACT_UNROLL
          for (int e = 0; e < vector; ++e) partial[g * rows_per_team + r] += q[g][c * vector + e] * k[e];
      }
    }
    reducer::run(partial, lane);
KVCOMPACT_UNROLL
    for (int i = 0; i < reducer::per_lane; ++i) {
      const int index = base + i, g = index / rows_per_team, row = team * rows_per_team + index % rows_per_team;
      const bool read = offsets[row] >= 0;
      const float score = read ? partial[i] : -INFINITY;
      if (read && g < heads_here && !isfinite(score))  // NaN or Inf in the query or the key
        report(p.status, device_fault::non_finite_attention, s, p.storage_layer, h, begin + t * tile + row);
      if (primary) {
        my_scores[index] = score;
        const int slot = begin + t * tile + row;
        if (p.logits != nullptr && g < heads_here && slot < end)
          p.logits[((static_cast<index_t>(s) * kv_heads + h) * capacity + slot) * p.group + first_head + g] = score;
      }
    }
    __syncwarp();
    // Online softmax of the team: new maxima, then this lane's probabilities, shared through the team.
    float new_max[Group], correction[Group];
KVCOMPACT_UNROLL
    for (int g = 0; g < Group; ++g) {
      float tile_max = my_scores[g * rows_per_team];
KVCOMPACT_UNROLL
      for (int r = 1; r < rows_per_team; ++r) tile_max = fmaxf(tile_max, my_scores[g * rows_per_team + r]);
      new_max[g] = fmaxf(running_max[g], tile_max);
      correction[g] = running_max[g] == -INFINITY ? 0.0f : exp2f(running_max[g] - new_max[g]);
    }
KVCOMPACT_UNROLL
    for (int i = 0; i < reducer::per_lane; ++i) {
      const int index = base + i;
      const float score = my_scores[index];
      const float probability = score == -INFINITY ? 0.0f : exp2f(score - pick(new_max, index / rows_per_team));
      if (primary) my_probabilities[index] = probability;
    }
    __syncwarp();
KVCOMPACT_UNROLL
    for (int g = 0; g < Group; ++g) {
      running_max[g] = new_max[g];
      running_sum[g] *= correction[g];
KVCOMPACT_UNROLL
      for (int r = 0; r < rows_per_team; ++r) running_sum[g] += my_probabilities[g * rows_per_team + r];  // 0 where not read
KVCOMPACT_UNROLL
      for (int i = 0; i < shape::dims_per_lane; ++i) out[g][i] *= correction[g];
    }
KVCOMPACT_UNROLL
    for (int r = 0; r < rows_per_team; ++r) {
      const int row = team * rows_per_team + r;
      if (!reads_values || offsets[row] < 0) continue;  // the same for the whole team
      float probability[Group];
KVCOMPACT_UNROLL
      for (int g = 0; g < Group; ++g) probability[g] = my_probabilities[g * rows_per_team + r];
KVCOMPACT_UNROLL
      for (int c = 0; c < shape::chunks_per_lane; ++c) {
        float v[vector];
        unpack_chunk<T>(*reinterpret_cast<const uint4*>(v_tile + row * shape::row_bytes + (c * shape::team + lane) * 16), v);
KVCOMPACT_UNROLL
        for (int g = 0; g < Group; ++g)
KVCOMPACT_UNROLL
          for (int e = 0; e < vector; ++e) out[g][c * vector + e] += probability[g] * v[e];
      }
    }
  }
  cp_async_wait<0>();
  allow_dependent_launch();
  __syncthreads();  // the pipeline's memory is free

  // Merge the teams' softmax states into the block's partial result.
  auto* merge_out = reinterpret_cast<float*>(kv);                                 // [team][Group][HeadDim]
  float* merge_stats = merge_out + shape::teams * Group * HeadDim;                // [team][Group][max, sum]
KVCOMPACT_UNROLL
  for (int g = 0; g < Group; ++g)
KVCOMPACT_UNROLL
    for (int c = 0; c < shape::chunks_per_lane; ++c)
KVCOMPACT_UNROLL
      for (int e = 0; e < vector; ++e)
        merge_out[(team * Group + g) * HeadDim + (c * shape::team + lane) * vector + e] = out[g][c * vector + e];
  if (lane == 0)
KVCOMPACT_UNROLL
    for (int g = 0; g < Group; ++g) {
      merge_stats[(team * Group + g) * 2] = running_max[g];
      merge_stats[(team * Group + g) * 2 + 1] = running_sum[g];
    }
  for (int o = 16; o > 0; o /= 2) visible += __shfl_xor_sync(0xffffffffu, visible, o);
  if (tid % 32 == 0) atomicAdd(visible_rows, visible);
  __syncthreads();
  for (int o = tid; o < heads_here * HeadDim; o += decode_threads) {
    const int g = o / HeadDim, d = o % HeadDim;
    float block_max = -INFINITY;
    for (int m = 0; m < shape::teams; ++m) block_max = fmaxf(block_max, merge_stats[(m * Group + g) * 2]);
    float value = 0.0f, sum = 0.0f;
    if (block_max != -INFINITY)
      for (int m = 0; m < shape::teams; ++m) {
        const float team_max = merge_stats[(m * Group + g) * 2];
        if (team_max == -INFINITY) continue;
        const float weight = exp2f(team_max - block_max);
        value += merge_out[(m * Group + g) * HeadDim + d] * weight;
        sum += merge_stats[(m * Group + g) * 2 + 1] * weight;
      }
    const index_t query = first_query + g;
    if (d < p.head_dim) p.partial_out[(query * p.splits + split) * p.head_dim + d] = value;
    if (d == 0) {
      p.partial_max[query * p.splits + split] = block_max;
      p.partial_sum[query * p.splits + split] = sum;
    }
  }
  if (chunk == 0 && tid == 0) p.partial_count[(static_cast<index_t>(s) * kv_heads + h) * p.splits + split] = *visible_rows;
  if (!block_arrives_last(p.arrivals + static_cast<index_t>(s) * kv_heads + h, p.splits * p.head_chunks)) return;

  // The last block of the head: combine every split of every query head of the group.
  auto* weights = reinterpret_cast<float*>(kv);  // [g][split]: exp2(max - head max) / head sum
  const int warp = tid / 32, warp_lane = tid % 32;
  for (int g = warp; g < p.group; g += decode_threads / 32) {
    const index_t query = static_cast<index_t>(s) * p.query_heads + static_cast<index_t>(h) * p.group + g;
    float head_max = -INFINITY;
    for (int i = warp_lane; i < p.splits; i += 32) head_max = fmaxf(head_max, p.partial_max[query * p.splits + i]);
    for (int o = 16; o > 0; o /= 2) head_max = fmaxf(head_max, __shfl_xor_sync(0xffffffffu, head_max, o));
    float head_sum = 0.0f;
    for (int i = warp_lane; i < p.splits; i += 32) {
      const float m = p.partial_max[query * p.splits + i];
      if (m != -INFINITY) head_sum += p.partial_sum[query * p.splits + i] * exp2f(m - head_max);
    }
    for (int o = 16; o > 0; o /= 2) head_sum += __shfl_xor_sync(0xffffffffu, head_sum, o);
    for (int i = warp_lane; i < p.splits; i += 32) {
      const float m = p.partial_max[query * p.splits + i];
      weights[g * p.splits + i] = m == -INFINITY || head_sum == 0.0f ? 0.0f : exp2f(m - head_max) / head_sum;
    }
    if (warp_lane == 0) {
      p.head_max[query] = head_max;
      p.head_sum[query] = head_sum;
    }
  }
  if (tid == 0) {
    std::int32_t count = 0;
    for (int i = 0; i < p.splits; ++i) count += p.partial_count[(static_cast<index_t>(s) * kv_heads + h) * p.splits + i];
    p.head_visible[static_cast<index_t>(s) * kv_heads + h] = count;
  }
  __syncthreads();
  for (int o = tid; o < p.group * p.head_dim; o += decode_threads) {
    const int g = o / p.head_dim, d = o % p.head_dim;
    const index_t query = static_cast<index_t>(s) * p.query_heads + static_cast<index_t>(h) * p.group + g;
    float value = 0.0f;
    for (int i = 0; i < p.splits; ++i) {
      const float w = weights[g * p.splits + i];
      if (w != 0.0f) value += w * p.partial_out[(query * p.splits + i) * p.head_dim + d];
    }
    if (!isfinite(value)) report(p.status, device_fault::non_finite_attention, s, p.storage_layer, h, -1);
    if (p.output != nullptr) p.output[query * p.head_dim + d] = from_float<T>(value);
  }
}

/// One compiled variant of decode_attention_kernel and what launching it takes.
template <class T, class Layout>
struct decode_kernel {
  void (*kernel)(decode_problem<T, Layout>);  ///< the kernel
  std::size_t shared_bytes;                   ///< its dynamic shared memory
  int tile;                                   ///< rows per pipeline stage
  int group;                                  ///< query heads per block (the group bucket)
  int pipeline_bytes;                         ///< shared memory reusable for the split combine
};

/// The variant of head-dimension bucket @p HeadDim and group bucket @p Group.
template <class T, class Layout, int HeadDim, int Group>
decode_kernel<T, Layout> decode_kernel_variant() {
  using shape = decode_shape<T, HeadDim, Group>;
  return {&decode_attention_kernel<T, Layout, HeadDim, Group>, static_cast<std::size_t>(shape::shared_bytes), shape::tile, Group, shape::kv_bytes};
}

/// The variant for @p group query heads per KV head (1, 2, 4 and 8 compiled; 3 runs as 4, 5 to 7
/// as 8, larger groups as chunks of 8).
template <class T, class Layout, int HeadDim>
decode_kernel<T, Layout> decode_kernel_for_group(int group) {
  if (group == 1) return decode_kernel_variant<T, Layout, HeadDim, 1>();
  if (group == 2) return decode_kernel_variant<T, Layout, HeadDim, 2>();
  if (group <= 4) return decode_kernel_variant<T, Layout, HeadDim, 4>();
  return decode_kernel_variant<T, Layout, HeadDim, decode_max_group>();
}

/// Largest head dimension the decode kernel compiles.
inline constexpr int decode_max_head_dim = 256;

/// The decode attention kernel for @p head_dim (at most decode_max_head_dim: 64, 128 and 256
/// compiled, others run zero-padded to the next) and @p group query heads per KV head.
template <class T, class Layout>
decode_kernel<T, Layout> decode_kernel_for(int head_dim, int group) {
  if (head_dim <= 64) return decode_kernel_for_group<T, Layout, 64>(group);
  if (head_dim <= 128) return decode_kernel_for_group<T, Layout, 128>(group);
  return decode_kernel_for_group<T, Layout, decode_max_head_dim>(group);
}

/// Fixed cost of one decode block in the split-count model, in tiles of streaming: loading the
/// queries, filling the pipeline, merging the teams and writing the partial result (an estimate, to
/// be calibrated on a GPU).
inline constexpr index_t decode_block_overhead_tiles = 2;

/// Modelled time of @p splits splits per head: `waves x (ceil(tiles / splits) + overhead)`, where
/// `waves = ceil(heads x splits / slots)` and @p slots is the number of blocks one wave runs (the
/// kernel's occupancy times the multiprocessors). @p heads counts the (sequence, KV head, group
/// chunk) triples, @p tiles the pipeline tiles of the longest head.
KVCOMPACT_HOST_DEVICE constexpr index_t decode_split_cost(index_t heads, index_t slots, index_t tiles, index_t splits) {
  const index_t waves = (heads * splits + slots - 1) / slots;
  return waves * ((tiles + splits - 1) / splits + decode_block_overhead_tiles);
}

/// The split count for wave efficiency: the smallest of 1..@p most that minimises decode_split_cost.
/// A split that would leave the last wave mostly idle costs a whole wave, so the count fills the
/// waves it starts: on 396 slots (an H200's 132 multiprocessors x 3 blocks) and 1024 tiles (32k
/// bf16 rows of 128), 8 heads get 49 splits (392 blocks, one wave), 64 heads 6 (384 blocks), 256
/// heads 3 (768 blocks in two full waves, where one split per head would leave 140 slots idle).
KVCOMPACT_HOST_DEVICE constexpr index_t decode_split_count(index_t heads, index_t slots, index_t tiles, index_t most) {
  index_t best = 1;
  for (index_t splits = 2; splits <= most; ++splits)
    if (decode_split_cost(heads, slots, tiles, splits) < decode_split_cost(heads, slots, tiles, best)) best = splits;
  return best;
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
