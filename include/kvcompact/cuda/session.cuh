// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The CUDA backend: prefill compression of the whole cache in a few launches, fused decode
/// attention with the scorer's state update, and decode-time eviction, all on one stream without
/// host synchronisation.
#pragma once

#include <kvcompact/cuda/check.cuh>
#include <kvcompact/cuda/detail/append_kernel.cuh>
#include <kvcompact/cuda/detail/compaction.cuh>
#include <kvcompact/cuda/detail/decode_kernels.cuh>
#include <kvcompact/cuda/detail/decode_update_kernel.cuh>
#include <kvcompact/cuda/detail/decode_victims.cuh>
#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/prefill_problem.cuh>
#include <kvcompact/cuda/detail/ptx_grid_dependency.cuh>
#include <kvcompact/cuda/detail/rank_exchange.cuh>
#include <kvcompact/cuda/detail/score_kernels.cuh>
#include <kvcompact/cuda/detail/select_kernels.cuh>
#include <kvcompact/cuda/detail/top_k.cuh>
#include <kvcompact/cuda/detail/workspace.cuh>
#include <kvcompact/cuda/device_rank_group.cuh>
#include <kvcompact/detail/decode_eviction.hpp>
#include <kvcompact/detail/parameter_checks.hpp>
#include <kvcompact/detail/size_checks.hpp>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/layouts/layer_condensed.hpp>
#include <kvcompact/policy.hpp>
#include <kvcompact/query_window.hpp>


#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda {

namespace detail {
/// Grid (Hkv, S x L): initial decode budgets and slot states of a filled cache; checks every slot's
/// mapping into storage.
template <class Policy, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads)
    initialise_kernel(kv_cache<T, Layout> cache, Policy policy, State* states, std::int32_t* budgets, device_status* status) {
  const index_t layers = cache.layout.num_layers(), capacity = cache.layout.capacity();
  const index_t h = blockIdx.x, s = blockIdx.y / layers, l = blockIdx.y % layers;
  const index_t head = cache.head_index(s, l, h);
  if (threadIdx.x == 0) budgets[head] = static_cast<std::int32_t>(policy.selector.budget(l, layers, capacity));
  const index_t n = checked_length(cache.lengths[head], ::kvcompact::detail::layer_capacity(cache.layout, l), status, s, l, h);
  for (index_t j = threadIdx.x; j < n; j += blockDim.x)
    if (checked_offset(cache.layout, s, l, h, j, status) >= 0)
      states[head * capacity + j] = ::kvcompact::detail::new_slot_state(policy, cache, s, l, h, j);
}

/// Sets @p count values starting at @p first to @p value.
template <class Value>
KVCOMPACT_KERNEL void fill_kernel(Value* first, index_t count, Value value) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) first[i] = value;
}
}  // namespace detail

/// @brief Runs a policy over an engine's cache in GPU memory. Same component math and results as
/// kvcompact::cpu::session (keep-sets identical up to ties within rounding of the scores), same
/// caller-owned memory model: `state` (kept between calls) and `workspace` (scratch) are device
/// buffers sized by state_bytes() and workspace_bytes(). Every call is asynchronous on the
/// session's stream; errors found inside kernels (NaN scores, page-table entries outside the pool,
/// full heads, bad lengths) are recorded on the device, the affected head or layer is left
/// unchanged, and check() raises them as kvcompact::error.
///
/// Decode is batched: append(), attend() and observe() handle one layer of every sequence at once;
/// a sequence whose position is negative takes no part in the step.
///
/// Call order and host-side checks are those of kvcompact::cpu::session: compress_prefill() at most
/// once and before the first append(), decoding without it is valid; the layout, the shape (scale
/// included), the policy's parameters and set_budget() are checked on the host before any launch.
/// Data in device memory (keys, values, queries, positions, a device-resident page table) is not
/// read by the host: kernels check what they read and check() reports it.
/// @tparam Policy a kvcompact::compression_policy
/// @tparam T storage element (float, kvcompact::half_t, kvcompact::bfloat16_t)
/// @tparam Layout a kvcompact::kv_layout whose data is device-readable
template <class Policy, class T, class Layout>
class session {
  static_assert(compression_policy<Policy>, "kvcompact: cuda::session<Policy, T, Layout>: Policy must be a kvcompact::policy<Scorer, Selector, Merger>");
  static_assert(::kvcompact::detail::check_layout<Layout>(), "kvcompact: cuda::session<Policy, T, Layout>: Layout is not a kvcompact::kv_layout");

 public:
  using state_type = typename Policy::scorer_type::state_type;  ///< per-slot decode state of the scorer

  /// @brief Bytes of device state: per-slot scorer state, per-head decode budgets, fault record, and
  /// the decode path's per-head eviction records and arrival counters.
  /// @param layout the cache layout @return the size in bytes
  /// @throws kvcompact::error when the layout's extents are invalid or the size overflows
  [[nodiscard]] static std::size_t state_bytes(const Layout& layout) {
    ::kvcompact::detail::validate_layout_extents(layout, "state_bytes");
    ::kvcompact::detail::require_size_fits(
        {layout.num_sequences(), layout.num_layers(), layout.num_kv_heads(), layout.capacity(), sizeof(state_type)}, "state_bytes", "layout");
    const auto heads = static_cast<std::size_t>(layout.num_sequences() * layout.num_layers() * layout.num_kv_heads());
    return round_up(heads * static_cast<std::size_t>(layout.capacity()) * sizeof(state_type)) + round_up(heads * sizeof(std::int32_t)) +
           round_up(sizeof(detail::device_status)) + decode_state_bytes(layout);
  }
  /// @brief Bytes of device workspace (scratch reused by every call), the same with or without a
  /// tensor-parallel group: set_rank_group() needs no more.
  /// @param layout the cache layout @param shape attention shape
  /// @param window_rows most observation-window rows compress_prefill() will be given
  /// @return the size in bytes
  /// @throws kvcompact::error when the layout's extents, the query heads or @p window_rows are invalid,
  /// or the size overflows
  [[nodiscard]] static std::size_t workspace_bytes(const Layout& layout, const attention_shape& shape, index_t window_rows = 64) {
    constexpr const char* where = "workspace_bytes";
    ::kvcompact::detail::validate_layout_extents(layout, where);
    shape.validate(layout.num_kv_heads(), layout.head_dim(), where);
    ::kvcompact::detail::require(window_rows > 0, where, "window_rows", "must be positive");
    ::kvcompact::detail::require_size_fits({window_rows}, where, "window_rows");
    ::kvcompact::detail::require_size_fits({layout.head_dim(), shape.query_heads}, where, "layout");
    // Each term of workspace_plan is at most 12 bytes times this product (per sequence, layer and head:
    // capacity or decode splits, times the padded head dimension or 3 statistics or Hkv, times the
    // padded window rows), so 2^56 keeps the sum of its ~20 terms within 64 bits.
    ::kvcompact::detail::require_size_fits({layout.num_sequences(), layout.num_layers(), shape.query_heads + layout.num_kv_heads(),
                                            layout.capacity() + detail::max_decode_splits,
                                            detail::padded_head_dim(layout.head_dim()) + layout.head_dim() + layout.num_kv_heads() + 64,
                                            detail::padded_window_rows(window_rows) + 8},
                                           where, "layout");
    return plan(layout, shape, window_rows).total;
  }

  /// @brief Binds a policy to a cache in device memory, checks every argument and initialises the
  /// decode state (one synchronisation of @p stream, to report a bad page table or length now).
  /// @param policy the policy @param cache the engine's cache (device pointers)
  /// @param shape query heads and scale @param state state_bytes() bytes of device memory, kept between calls
  /// @param workspace workspace_bytes() bytes of device memory
  /// @param stream the stream every call runs on
  /// @param window_rows most observation-window rows compress_prefill() will be given (as passed to workspace_bytes())
  /// @throws kvcompact::error naming the bad argument ("policy" when a budget exceeds the capacity);
  /// kvcompact::cuda::cuda_error when a CUDA call fails
  session(const Policy& policy, const kv_cache<T, Layout>& cache, const attention_shape& shape, std::span<std::byte> state,
          std::span<std::byte> workspace, cudaStream_t stream = nullptr, index_t window_rows = 64)
      : policy_(policy), cache_(cache), shape_(shape), stream_(stream), window_rows_(window_rows) {
    constexpr const char* where = "cuda::session";
    using ::kvcompact::detail::require;
    ::kvcompact::detail::validate_layout_extents(cache_.layout, where);
    require(cache_.keys != nullptr, where, "cache.keys", "null pointer");
    require(cache_.values != nullptr, where, "cache.values", "null pointer");
    require(cache_.lengths != nullptr, where, "cache.lengths", "null pointer");
    require(cache_.positions != nullptr, where, "cache.positions", "null pointer");
    require(reinterpret_cast<std::uintptr_t>(cache_.keys) % alignof(T) == 0, where, "cache.keys", "misaligned for the element type");
    require(reinterpret_cast<std::uintptr_t>(cache_.values) % alignof(T) == 0, where, "cache.values", "misaligned for the element type");
    require(reinterpret_cast<std::uintptr_t>(cache_.lengths) % 4 == 0, where, "cache.lengths", "misaligned");
    require(reinterpret_cast<std::uintptr_t>(cache_.positions) % 4 == 0, where, "cache.positions", "misaligned");
    require(static_cast<const void*>(cache_.keys) != static_cast<const void*>(cache_.values), where, "cache.values",
            "is the same memory as cache.keys");
    const index_t kv_heads = cache_.layout.num_kv_heads();
    shape.validate(kv_heads, head_dim(), where);
    require(head_dim() <= detail::decode_max_head_dim, where, "cache.layout",
            [&] { return "head_dim " + std::to_string(head_dim()) + " exceeds the " + std::to_string(detail::decode_max_head_dim) +
                         " the CUDA decode kernel handles"; });
    require(window_rows > 0, where, "window_rows", "must be positive");
    require(!Policy::needs_attention || head_dim() <= detail::max_window_head_dim, where, "cache.layout.head_dim",
            [&] { return "is " + std::to_string(head_dim()) + "; attention scorers on the CUDA backend take head dimensions up to 256"; });
    require(state.size() >= state_bytes(cache_.layout), where, "state",
            [&] { return "has " + std::to_string(state.size()) + " bytes, state_bytes() asks for " + std::to_string(state_bytes(cache_.layout)); });
    require(workspace.size() >= workspace_bytes(cache_.layout, shape, window_rows), where, "workspace",
            [&] { return "has " + std::to_string(workspace.size()) + " bytes, workspace_bytes() asks for " +
                std::to_string(workspace_bytes(cache_.layout, shape, window_rows)); });
    require(state.data() != nullptr && reinterpret_cast<std::uintptr_t>(state.data()) % 256 == 0, where, "state",
            "null or not 256-byte aligned (cudaMalloc memory is)");
    require(workspace.data() != nullptr && reinterpret_cast<std::uintptr_t>(workspace.data()) % 256 == 0, where, "workspace",
            "null or not 256-byte aligned (cudaMalloc memory is)");
    ::kvcompact::detail::validate_policy(policy_, cache_.layout, where);
    scale_ = shape.scale != 0.0f ? shape.scale : 1.0f / std::sqrt(static_cast<float>(head_dim()));
    const std::size_t heads = static_cast<std::size_t>(cache_.head_count());
    states_ = reinterpret_cast<state_type*>(state.data());
    budgets_ = reinterpret_cast<std::int32_t*>(state.data() + round_up(heads * static_cast<std::size_t>(capacity()) * sizeof(state_type)));
    status_ = reinterpret_cast<detail::device_status*>(reinterpret_cast<std::byte*>(budgets_) + round_up(heads * sizeof(std::int32_t)));
    records_ = reinterpret_cast<detail::eviction_record*>(reinterpret_cast<std::byte*>(status_) + round_up(sizeof(detail::device_status)));
    attention_arrivals_ = reinterpret_cast<std::int32_t*>(reinterpret_cast<std::byte*>(records_) + round_up(heads * sizeof(detail::eviction_record)));
    update_arrivals_ = attention_arrivals_ + cache_.layout.num_sequences() * kv_heads;
    workspace_ = workspace.data();
    plan_ = plan(cache_.layout, shape, window_rows);
    int device = 0, multiprocessors = 0;
    cuda::check(cudaGetDevice(&device), where, "cudaGetDevice");
    cuda::check(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device), where, "cudaDeviceGetAttribute");
    multiprocessors_ = multiprocessors;
    int shared_optin = 0;
    cuda::check(cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), where, "cudaDeviceGetAttribute");
    shared_limit_ = shared_optin > 48 * 1024 ? static_cast<std::size_t>(shared_optin) : std::size_t{48 * 1024};
    cuda::check(cudaMemsetAsync(status_, 0, sizeof(detail::device_status), stream_), where, "cudaMemsetAsync(status)");
    cuda::check(cudaMemsetAsync(records_, 0, decode_state_bytes(cache_.layout), stream_), where, "cudaMemsetAsync(decode state)");
    plan_decode(where);
    detail::launch(&detail::initialise_kernel<Policy, T, Layout, state_type>, dim3(static_cast<unsigned>(kv_heads), layer_blocks(where)),
                   detail::prefill_threads, 0, stream_, cache_, policy_, states_, budgets_, status_);
    detail::check_launch(where, "initialise_kernel");
    this->check(where);
  }

  /// @brief Makes this session one rank of a tensor-parallel group (kvcompact::cuda::device_rank_group):
  /// its KV heads are the rank's share of the model's, and the decisions that span the KV heads of a
  /// layer call the group's all-reduce on the session's stream, so every rank keeps what one unsharded
  /// session would keep for its heads, with the same slots, K/V and decode state bit for bit. On the
  /// CUDA backend those decisions are the layer's newest position, which recent-token protection
  /// counts from (at prefill: one all-reduce of sequences x layers doubles per rank), scores shared
  /// across KV heads (TOVA, PrefixKV, Elastic Cache): their reduction over query heads runs rank after
  /// rank in the unsharded query-head order, so the float bits match one session's (at prefill one
  /// all-reduce of sequences x layers x capacity doubles per rank, in attend() and observe() one of
  /// sequences x capacity doubles per rank), and a layer-scope ranked selector (Ada-KV), which ranks
  /// its layer over every rank's heads: the rounds of a radix select
  /// (kvcompact::detail::layer_top_counts) between kernels, about ten all-reduces of up to 16 doubles
  /// per layer, plus one per rank for ties, and a kvcompact::rank_summing_selector (WindowKV), whose
  /// window scores sum every rank's query heads rank after rank in the unsharded order before the
  /// selection kernel ranks the windows (at prefill one all-reduce of sequences x layers x capacity
  /// doubles per rank). All of it is stream-ordered between kernels, without host synchronisation.
  /// Refused with several ranks: other layer-scope cooperative selectors (a user-written one, which
  /// kvcompact::cpu::session::set_rank_group takes) and an exact-total repair (Ada-KV's strict mode,
  /// refused by the CPU backend too).
  ///
  /// Every rank must make the same calls in the same order, over caches of the same extents. Set it
  /// before compress_prefill(); a group of one rank is the default.
  /// @param group the rank, the rank count and the engine's all-reduce (not copied deeper: the
  /// context pointer must stay valid)
  /// @throws kvcompact::error naming "group.*" for a bad group, or "policy" for a policy whose
  /// decisions span KV heads in a way the CUDA backend does not reduce across ranks (or an exact-total
  /// repair), when the group has several ranks
  void set_rank_group(const device_rank_group& group) {
    constexpr const char* where = "set_rank_group";
    group.validate(where);
    using selector_type = typename Policy::selector_type;
    ::kvcompact::detail::require(group.ranks == 1 || selector_type::scope != selection_scope::layer || ranked_selector<selector_type> ||
                                     rank_summing_selector<selector_type, layer_context<T, Layout>>,
                                 where, "policy",
                                 "a layer-scope cooperative selector that is not a rank_summing_selector is not reduced across ranks on the CUDA "
                                 "backend (cpu::session does)");
    if constexpr (ranked_selector<selector_type> && selector_type::scope == selection_scope::layer)
      ::kvcompact::detail::require(group.ranks == 1 || !::kvcompact::detail::exact_total(policy_.selector), where, "policy",
                                   "an exact-total repair (Ada-KV's strict mode) moves slots between the heads of one rank only");
    ranks_ = group;
  }

  /// @brief Compresses every sequence and storage layer of a prefilled cache: scores, selects, merges
  /// and compacts in place; lengths, positions, decode state and budgets are updated on the device.
  /// Scoring runs the observation window's softmax in two passes over K on tensor cores, each key
  /// read once per pass for all window rows of its KV head, without materialising the window x N
  /// matrix; selectors and mergers run through the selection contract in parallel (ranked
  /// selectors: per-slot verdicts and rank keys per head, then the grid-wide top-k over many blocks
  /// per head; cooperative selectors and mergers: their own group code on a thread block per head);
  /// compaction moves the kept rows with 16-byte accesses over many blocks per head.
  /// @param window observation-window queries in device memory (ignored by scorers that need no attention)
  /// @throws kvcompact::error on a bad window, or a second call / a call after append() ("session");
  /// faults inside kernels surface in check()
  void compress_prefill(const query_window& window = {}) {
    constexpr const char* where = "compress_prefill";
    using ::kvcompact::detail::require;
    require(!compressed_, where, "session", "called twice: the cache is compressed already (one compression per session)");
    require(!decoding_, where, "session", "called after append(): compress the prefill before decoding starts");
    require(layers_compressed_ == 0, where, "session", "called after compress_prefill_layer(): the layers are being compressed one by one");
    check_window(where, window);
    compressed_ = true;
    run_prefill(where, window, 0, cache_.layout.num_layers());
  }

  /// @brief Compresses one storage layer of every sequence as soon as its prefill is done: the same
  /// kernels as compress_prefill(), launched over that layer only, with the same keep-sets. Layers
  /// 0, 1, ... in order, each once, all before the first append(); only this layer's window queries
  /// are read. WindowKV-style selectors (one decision across layers) are rejected at compile time.
  /// @param layer storage layer, the next one in order (0 first)
  /// @param layer_window this layer's window queries in device memory, query_window's layout with one
  /// layer (ignored by scorers that need no attention)
  /// @throws kvcompact::error naming "layer" when it is not the next layer, "session" after
  /// compress_prefill() or append(), or a bad window; faults inside kernels surface in check()
  void compress_prefill_layer(index_t layer, const query_window& layer_window = {}) {
    static_assert(!::kvcompact::detail::decides_across_layers<typename Policy::selector_type>,
                  "kvcompact: compress_prefill_layer: this selector shares one decision across layers (WindowKV); use compress_prefill()");
    constexpr const char* where = "compress_prefill_layer";
    using ::kvcompact::detail::require;
    require(!compressed_, where, "session", "the cache is compressed already (compress_prefill() or every layer)");
    require(!decoding_, where, "session", "called after append(): compress the prefill before decoding starts");
    require(layer == layers_compressed_, where, "layer", [&] {
      return "is " + std::to_string(layer) + ", expected " + std::to_string(layers_compressed_) + ": each storage layer is compressed once, in order";
    });
    check_window(where, layer_window);
    run_prefill(where, layer_window, layer, 1);
    compressed_ = ++layers_compressed_ == cache_.layout.num_layers();
  }

 private:
  void check_window(const char* where, const query_window& window) const {
    using ::kvcompact::detail::require;
    if constexpr (Policy::needs_attention) {
      require(window.queries != nullptr, where, "window.queries", "null pointer, but the scorer needs attention");
      require(window.positions != nullptr, where, "window.positions", "null pointer");
      require(window.rows > 0, where, "window.rows", "must be positive");
      require(window.rows <= window_rows_, where, "window.rows",
              [&] { return std::to_string(window.rows) + " exceeds the " + std::to_string(window_rows_) + " rows the workspace was sized for"; });
      require(window.head_dim == 0 || window.head_dim == head_dim(), where, "window.head_dim",
              [&] { return "is " + std::to_string(window.head_dim) + " but the cache's head_dim is " + std::to_string(head_dim()); });
    }
  }

  // The prefill stages over storage layers [first_layer, first_layer + layer_count) of every sequence.
  void run_prefill(const char* where, const query_window& window, index_t first_layer, index_t layer_count) {
    auto p = prefill(window, first_layer, layer_count);
    ++generation_;  // slots move and states restart: the decode path's eviction records are stale
    const index_t layers = cache_.layout.num_layers(), sequences = cache_.layout.num_sequences();
    const unsigned heads = static_cast<unsigned>(cache_.layout.num_kv_heads());
    const unsigned layer_grid = detail::grid_extent(sequences * layer_count, where, "sequences x layers");
    cuda::check(cudaMemsetAsync(p.step, 0, sizeof(std::int32_t) * sequences * layers, stream_), where, "cudaMemsetAsync(step)");
    cuda::check(cudaMemsetAsync(p.layer_faults, 0, sizeof(std::int32_t) * sequences * layers, stream_), where, "cudaMemsetAsync(faults)");
    detail::launch(&detail::prepare_kernel<T, Layout, state_type>, dim3(heads, layer_grid), detail::prefill_threads, 0, stream_, p);
    detail::check_launch(where, "prepare_kernel");
    if (ranks_.ranks > 1)  // the layer's newest position, over every rank's heads (recent-token protection counts from it)
      detail::newest_across_ranks(ranks_, p.step, detail::at_offset<double>(workspace_, plan_.rank_exchange), sequences * layers, stream_, where);
    if constexpr (Policy::needs_attention) {
      switch (detail::padded_head_dim(head_dim())) {
        case 64: score_window<64>(p); break;
        case 128: score_window<128>(p); break;
        default: score_window<256>(p); break;
      }
    } else {
      constexpr auto kernel = &detail::slot_score_kernel<Policy, detail::needs_query_scores<Policy>, T, Layout, state_type>;
      const std::size_t bytes = detail::slot_shared_bytes(head_dim(), sizeof(T));
      detail::allow_shared_memory(kernel, bytes, where);
      detail::launch(kernel, dim3(static_cast<unsigned>(detail::ceil_div(capacity(), detail::slot_tile)), heads, layer_grid), detail::slot_tile,
                     bytes, stream_, p, policy_);
      detail::check_launch(where, "slot_score_kernel");
    }
    detail::launch_selection(policy_, p, ranked_top_k(), layer_exchange(), heads, layer_grid, detail::grid_extent(sequences, where, "sequences"), stream_, where);
    detail::launch_compaction(p, policy_, workspace_span(plan_.compaction, plan_.compaction_bytes), stream_, where);
  }

 public:
  /// @brief Inserts one token's K and V into every KV head of a storage layer, for every sequence. A
  /// head at its budget first evicts by the policy (victims merged if the merger wants) and the
  /// token reuses a freed slot.
  /// @param layer storage layer
  /// @param keys [sequences][kv_heads][head_dim] new keys (post-RoPE), device memory
  /// @param values [sequences][kv_heads][head_dim] new values, device memory
  /// @param positions [sequences] the tokens' logical positions, device memory; negative: no token
  /// @throws kvcompact::error on bad arguments; a full head surfaces in check()
  void append(index_t layer, const T* keys, const T* values, const std::int32_t* positions) {
    constexpr const char* where = "append";
    ::kvcompact::detail::require(layer >= 0 && layer < cache_.layout.num_layers(), where, "layer", "out of range");
    ::kvcompact::detail::require(keys != nullptr, where, "keys", "null pointer");
    ::kvcompact::detail::require(values != nullptr, where, "values", "null pointer");
    ::kvcompact::detail::require(positions != nullptr, where, "positions", "null pointer");
    ::kvcompact::detail::require(layers_compressed_ == 0 || compressed_, where, "session", [&] {
      return "compress_prefill_layer() has compressed " + std::to_string(layers_compressed_) + " of " + std::to_string(cache_.layout.num_layers()) +
             " layers: compress every layer before decoding";
    });
    decoding_ = true;
    std::byte* w = workspace_;
    const detail::decode_scratch scratch{detail::at_offset<float>(w, plan_.scores),    detail::at_offset<float>(w, plan_.floats),
                                         detail::at_offset<std::int32_t>(w, plan_.indices), detail::at_offset<std::int32_t>(w, plan_.order),
                                         detail::at_offset<std::uint8_t>(w, plan_.keep), detail::at_offset<std::int32_t>(w, plan_.targets),
                                         detail::at_offset<std::uint8_t>(w, plan_.decode_order_ready),
                                         detail::at_offset<std::int32_t>(w, plan_.shared)};
    const detail::append_problem<T, Layout, state_type> problem{cache_,   layer,   shape_.query_heads, keys,     values,      positions,
                                                                states_,  budgets_, scratch,           records_, generation_, status_};
    detail::launch(&detail::append_kernel<Policy, T, Layout>,
                   dim3(static_cast<unsigned>(cache_.layout.num_kv_heads()), detail::grid_extent(cache_.layout.num_sequences(), where, "sequences")),
                   detail::append_threads, 0, stream_, problem, policy_);
    detail::check_launch(where, "append_kernel");
  }

  /// @brief Decode attention of one token's queries per sequence: one pass over K and V (split over the
  /// multiprocessors, combined in the same launch), then, when the policy needs it, the scorer's state
  /// update and the search for the next insertion's victims in a second kernel that reads only the
  /// pass's logits and the slots' states (see docs/cuda_backend.md, "The decode step").
  /// @param layer attending layer (model layer for layer-mapped layouts)
  /// @param queries [sequences][query_heads][head_dim] queries, device memory
  /// @param positions [sequences] the tokens' positions, device memory; negative: skip the sequence
  /// @param output [sequences][query_heads][head_dim] attention output, device memory
  void attend(index_t layer, const T* queries, const std::int32_t* positions, T* output) {
    ::kvcompact::detail::require(output != nullptr, "attend", "output", "null pointer");
    run_attention("attend", layer, queries, positions, output);
  }

  /// @brief The scorer's state update only, for engines with their own attention kernel (one extra
  /// read of K; nothing to do for scorers that need no attention).
  /// @param layer attending layer @param queries [sequences][query_heads][head_dim] queries, device memory
  /// @param positions [sequences] the tokens' positions, device memory
  void observe(index_t layer, const T* queries, const std::int32_t* positions) {
    if constexpr (Policy::needs_attention) run_attention("observe", layer, queries, positions, nullptr);
  }

  /// @brief Sets the decode budget of every head of a sequence.
  /// @param sequence sequence @param slots the budget, at least what the policy's protected tokens need
  /// @throws kvcompact::error when either is out of range
  void set_budget(index_t sequence, index_t slots) {
    ::kvcompact::detail::require(sequence >= 0 && sequence < cache_.layout.num_sequences(), "set_budget", "sequence", "out of range");
    ::kvcompact::detail::require(slots > 0 && slots <= capacity(), "set_budget", "slots", "must be in [1, capacity]");
    ::kvcompact::detail::require_protected_fit(::kvcompact::detail::smallest_decode_budget(policy_.selector), slots, "set_budget", "slots");
    const index_t count = cache_.layout.num_layers() * cache_.layout.num_kv_heads();
    detail::launch(&detail::fill_kernel<std::int32_t>, dim3(static_cast<unsigned>(detail::ceil_div(count, 256))), 256, 0, stream_,
                   budgets_ + cache_.head_index(sequence, 0, 0), count, static_cast<std::int32_t>(slots));
    detail::check_launch("set_budget", "fill_kernel");
  }

  /// @brief Waits for the stream and raises the first fault a kernel recorded since the last check.
  /// @param where name used in the error message
  /// @throws kvcompact::error describing the fault; kvcompact::cuda::cuda_error when the stream failed
  void check(const char* where = "cuda::session") const { detail::raise_recorded(status_, stream_, where); }

  /// @brief The stream every call runs on. @return the stream
  [[nodiscard]] cudaStream_t stream() const { return stream_; }
  /// @brief The policy. @return the policy
  [[nodiscard]] const Policy& policy() const { return policy_; }
  /// @brief The cache view. @return the cache
  [[nodiscard]] const kv_cache<T, Layout>& cache() const { return cache_; }
  /// @brief Device array of the per-slot decode states, `[sequences][layers][kv_heads][capacity]`.
  /// @return the array
  [[nodiscard]] const state_type* slot_states() const { return states_; }
  /// @brief Device array of the decode budgets, `[sequences][layers][kv_heads]`. @return the array
  [[nodiscard]] const std::int32_t* budgets() const { return budgets_; }

 private:
  static std::size_t round_up(std::size_t bytes) { return (bytes + 255) / 256 * 256; }
  static detail::workspace_plan plan(const Layout& layout, const attention_shape& shape, index_t window_rows) {
    return detail::workspace_plan::make(layout.num_sequences(), layout.num_layers(), layout.num_kv_heads(), layout.capacity(),
                                        layout.head_dim(), shape.query_heads, window_rows, static_cast<index_t>(sizeof(T)));
  }
  index_t capacity() const { return cache_.layout.capacity(); }
  index_t head_dim() const { return cache_.layout.head_dim(); }
  index_t group() const { return shape_.query_heads / cache_.layout.num_kv_heads(); }
  unsigned layer_blocks(const char* where) const {
    return detail::grid_extent(cache_.layout.num_sequences() * cache_.layout.num_layers(), where, "sequences x layers");
  }

  /// The workspace bytes [offset, offset + bytes).
  std::span<std::byte> workspace_span(std::size_t offset, std::size_t bytes) const { return {workspace_ + offset, bytes}; }

  /// The ranked tier's arrays for the grid-wide top-k (candidate counts, wanted counts, scratch).
  detail::ranked_top_k ranked_top_k() const {
    return {detail::at_offset<std::int32_t>(workspace_, plan_.top_k_counts), detail::at_offset<std::int32_t>(workspace_, plan_.top_k_quota),
            workspace_span(plan_.top_k_scratch, plan_.top_k_scratch_bytes)};
  }

  /// The tensor-parallel group and the arrays of a layer-scope selector's ranking across its ranks.
  detail::layer_exchange layer_exchange() const {
    return {ranks_, detail::at_offset<double>(workspace_, plan_.rank_exchange),
            detail::at_offset<::kvcompact::detail::layer_cut>(workspace_, plan_.layer_cuts)};
  }

  detail::prefill_problem<T, Layout, state_type> prefill(const query_window& window, index_t first_layer, index_t layer_count) const {
    std::byte* w = workspace_;
    const index_t heads = cache_.head_count(), padded_rows = detail::padded_window_rows(window.rows);
    // Key chunks: enough blocks for about two waves of the score kernel (two blocks per SM), at
    // most what the statistics array was planned for, in multiples of window_chunk_quantum keys.
    const index_t wanted = detail::ceil_div(4 * static_cast<index_t>(multiprocessors_), heads);
    const index_t cap = detail::window_chunk_cap(heads, capacity());
    const index_t chunks = wanted < 1 ? 1 : (wanted > cap ? cap : wanted);
    const index_t chunk_keys = detail::ceil_div(detail::ceil_div(capacity(), chunks), detail::window_chunk_quantum) * detail::window_chunk_quantum;
    return {cache_,
            shape_.query_heads,
            scale_,
            window,
            detail::at_offset<float>(w, plan_.scores),
            detail::at_offset<float>(w, plan_.floats),
            detail::at_offset<std::int32_t>(w, plan_.indices),
            detail::at_offset<std::int32_t>(w, plan_.order),
            detail::at_offset<std::int32_t>(w, plan_.targets),
            detail::at_offset<std::uint8_t>(w, plan_.keep),
            detail::at_offset<float>(w, plan_.query_scores),
            detail::at_offset<std::uint8_t>(w, plan_.order_ready),
            detail::at_offset<::kvcompact::detail::ranked_head>(w, plan_.ranking),
            detail::at_offset<std::int32_t>(w, plan_.shared),
            detail::at_offset<std::int32_t>(w, plan_.step),
            detail::at_offset<std::int32_t>(w, plan_.layer_faults),
            detail::at_offset<float>(w, plan_.stats),
            detail::ceil_div(capacity(), chunk_keys),
            chunk_keys,
            detail::at_offset<float>(w, plan_.row_lse),
            detail::at_offset<std::int32_t>(w, plan_.row_visible),
            detail::at_offset<T>(w, plan_.window_queries),
            padded_rows,
            0,
            false,
            states_,
            budgets_,
            status_,
            first_layer,
            layer_count};
  }

  // Bytes of the decode path's part of the state: eviction records and the two arrival counters.
  static std::size_t decode_state_bytes(const Layout& layout) {
    const auto heads = static_cast<std::size_t>(layout.num_sequences() * layout.num_layers() * layout.num_kv_heads());
    return round_up(heads * sizeof(detail::eviction_record)) + round_up(2 * static_cast<std::size_t>(layout.num_sequences() * layout.num_kv_heads()) * 4);
  }

  // Chooses the decode attention variant and the split count, once: the count that fills the waves of
  // blocks it starts (detail::decode_split_count over the kernel's occupancy times the multiprocessors),
  // each split at least one tile of the capacity (lengths live on the device).
  void plan_decode(const char* where) {
    const int group_size = static_cast<int>(group());
    decode_ = detail::decode_kernel_for<T, Layout>(static_cast<int>(head_dim()), group_size);
    detail::allow_shared_memory(decode_.kernel, decode_.shared_bytes, where);
    int per_multiprocessor = 0;
    cuda::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, decode_.kernel, detail::decode_threads, decode_.shared_bytes), where,
                "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    head_chunks_ = (group_size + decode_.group - 1) / decode_.group;
    const index_t heads = cache_.layout.num_sequences() * cache_.layout.num_kv_heads() * head_chunks_;
    const index_t slots = static_cast<index_t>(multiprocessors_) * (per_multiprocessor > 0 ? per_multiprocessor : 1);
    const index_t tiles = detail::ceil_div(capacity(), decode_.tile);
    const index_t most = std::min<index_t>({tiles, detail::max_decode_splits, static_cast<index_t>(decode_.pipeline_bytes / (4 * group_size))});
    splits_ = static_cast<int>(detail::decode_split_count(heads, slots, tiles, std::max<index_t>(most, 1)));
    const index_t vector = 16 / static_cast<index_t>(sizeof(T));
    vector_rows_ = cache_.layout.dim_stride() == 1 && head_dim() % vector == 0 && reinterpret_cast<std::uintptr_t>(cache_.keys) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(cache_.values) % 16 == 0;
    programmatic_ = detail::programmatic_launch_supported();
  }

  /// The observation-window scoring stage for padded head dimension @p Dp (score_kernels.cuh).
  template <int Dp>
  void score_window(detail::prefill_problem<T, Layout, state_type>& p) const {
    constexpr const char* where = "compress_prefill";
    using scorer_type = typename Policy::scorer_type;
    const unsigned heads = static_cast<unsigned>(cache_.layout.num_kv_heads());
    const unsigned layer_grid = detail::grid_extent(cache_.layout.num_sequences() * p.grid_layers, where, "sequences x layers");
    const index_t group_rows = group() * p.padded_rows;
    const index_t block_rows = (scorer_type::shares_across_kv_heads ? cache_.layout.num_kv_heads() : 1) * group_rows;
    const std::size_t resident = detail::score_shared_bytes<T, Dp>(block_rows);
    p.rows_resident = resident <= shared_limit_;
    const std::size_t stage_budget = shared_limit_ < 96 * 1024 ? shared_limit_ : std::size_t{96 * 1024};
    p.staged_rows = p.rows_resident ? block_rows
                                    : static_cast<index_t>(stage_budget / detail::score_shared_bytes<T, Dp>(1)) / 8 * 8;
    detail::launch(&detail::window_queries_kernel<Dp, T, Layout, state_type>, dim3(static_cast<unsigned>(shape_.query_heads), layer_grid),
                   detail::prefill_threads, 0, stream_, p);
    detail::check_launch(where, "window_queries_kernel");
    const dim3 grid(static_cast<unsigned>(p.chunks), heads, layer_grid);
    constexpr auto statistics = &detail::window_statistics_kernel<Dp, T, Layout, state_type>;
    const std::size_t statistics_bytes = detail::statistics_shared_bytes<T, Dp>();
    detail::allow_shared_memory(statistics, statistics_bytes, where);
    detail::launch(statistics, grid, detail::statistics_threads, statistics_bytes, stream_, p);
    detail::check_launch(where, "window_statistics_kernel");
    detail::launch(&detail::window_normaliser_kernel<T, Layout, state_type>, dim3(heads, layer_grid), detail::prefill_threads, 0, stream_, p);
    detail::check_launch(where, "window_normaliser_kernel");
    constexpr auto scores = &detail::window_scores_kernel<scorer_type, Dp, detail::needs_query_scores<Policy>, T, Layout, state_type>;
    const std::size_t score_bytes = detail::score_shared_bytes<T, Dp>(p.staged_rows);
    detail::allow_shared_memory(scores, score_bytes, where);
    const auto launch_scores = [&](detail::score_handoff handoff) {
      detail::launch(scores, dim3(static_cast<unsigned>(p.chunks), scorer_type::shares_across_kv_heads ? 1u : heads, layer_grid),
                     detail::score_threads, score_bytes, stream_, p, policy_.scorer, handoff);
      detail::check_launch(where, "window_scores_kernel");
    };
    if (!scorer_type::shares_across_kv_heads || ranks_.ranks == 1) return launch_scores({});
    // Scores shared across KV heads: the group reduction runs over every rank's query heads in the
    // unsharded order, rank after rank, then each rank finishes it for its own heads.
    double* running = detail::at_offset<double>(workspace_, plan_.rank_exchange);
    detail::continue_across_ranks(ranks_, running, cache_.layout.num_sequences() * p.grid_layers * capacity(), stream_, where,
                                  [&](bool continues) { launch_scores({running, continues}); });
    detail::launch(&detail::finish_shared_scores_kernel<scorer_type, T, Layout, state_type>,
                   dim3(static_cast<unsigned>(detail::ceil_div(capacity(), detail::prefill_threads)), layer_grid), detail::prefill_threads, 0,
                   stream_, p, policy_.scorer, running, static_cast<int>(shape_.query_heads * ranks_.ranks));
    detail::check_launch(where, "finish_shared_scores_kernel");
  }

  void run_attention(const char* where, index_t layer, const T* queries, const std::int32_t* positions, T* output) {
    using ::kvcompact::detail::require;
    if constexpr (layer_mapped_layout<Layout>)
      require(layer >= 0 && layer < cache_.layout.num_model_layers(), where, "layer", "out of range");
    const index_t storage = ::kvcompact::detail::storage_layer_of(cache_.layout, layer);
    require(storage >= 0 && storage < cache_.layout.num_layers(), where, "layer", "out of range");
    require(queries != nullptr, where, "queries", "null pointer");
    require(positions != nullptr, where, "positions", "null pointer");
    const index_t sequences = cache_.layout.num_sequences(), kv_heads = cache_.layout.num_kv_heads();
    std::byte* w = workspace_;
    const detail::decode_problem<T, Layout> problem{cache_,
                                                    storage,
                                                    layer,
                                                    static_cast<int>(shape_.query_heads),
                                                    static_cast<int>(group()),
                                                    static_cast<int>(head_dim()),
                                                    splits_,
                                                    head_chunks_,
                                                    vector_rows_,
                                                    scale_ * 1.4426950408889634f,  // log2(e): the kernels use exp2
                                                    queries,
                                                    positions,
                                                    output,
                                                    Policy::needs_attention ? detail::at_offset<float>(w, plan_.logits) : nullptr,
                                                    detail::at_offset<float>(w, plan_.partial_out),
                                                    detail::at_offset<float>(w, plan_.partial_max),
                                                    detail::at_offset<float>(w, plan_.partial_sum),
                                                    detail::at_offset<std::int32_t>(w, plan_.partial_count),
                                                    detail::at_offset<float>(w, plan_.head_max),
                                                    detail::at_offset<float>(w, plan_.head_sum),
                                                    detail::at_offset<std::int32_t>(w, plan_.head_visible),
                                                    attention_arrivals_,
                                                    status_};
    const unsigned sequence_grid = detail::grid_extent(sequences, where, "sequences");
    const dim3 grid(static_cast<unsigned>(splits_ * head_chunks_), static_cast<unsigned>(kv_heads), sequence_grid);
    detail::launch(decode_.kernel, grid, detail::decode_threads, decode_.shared_bytes, stream_, problem);
    detail::check_launch(where, "decode_attention_kernel");
    const bool find_victims = ::kvcompact::detail::decode_eviction_of(policy_) == ::kvcompact::detail::decode_eviction_kind::ranked;
    if (!Policy::needs_attention && !find_victims) return;
    const int tiles = static_cast<int>(detail::ceil_div(capacity(), detail::update_tile));
    detail::update_problem<state_type> update{states_,
                                              records_,
                                              detail::at_offset<detail::victim_pair>(w, plan_.tile_victims),
                                              update_arrivals_,
                                              tiles,
                                              generation_,
                                              Policy::needs_attention,
                                              find_victims};
    const bool shared_scores = Policy::shares_scores_across_kv_heads;
    const dim3 update_grid(static_cast<unsigned>(tiles), shared_scores ? 1u : static_cast<unsigned>(kv_heads), sequence_grid);
    const std::size_t update_bytes = detail::update_shared_bytes(shared_scores ? shape_.query_heads : group(), kv_heads);
    const auto launch_update = [&](const detail::update_problem<state_type>& u) {
      cuda::check(detail::launch_programmatic(programmatic_, &detail::decode_update_kernel<Policy, T, Layout>, update_grid, detail::update_threads,
                                              update_bytes, stream_, problem, u, policy_),
                  where, "decode_update_kernel");
    };
    if (shared_scores && Policy::needs_attention && ranks_.ranks > 1) {
      // The group reduction of the shared term runs over every rank's query heads in the unsharded
      // order, rank after rank (state updates and victims wait for the last rank).
      update.running = detail::at_offset<double>(w, plan_.rank_exchange);
      update.ranks = ranks_.ranks;
      detail::continue_across_ranks(ranks_, update.running, sequences * capacity(), stream_, where, [&](bool continues) {
        detail::update_problem<state_type> hand_on = update;
        hand_on.hand_on = true;
        hand_on.continues = continues;
        hand_on.find_victims = false;
        launch_update(hand_on);
      });
    }
    launch_update(update);
  }

  Policy policy_;
  kv_cache<T, Layout> cache_;
  attention_shape shape_;
  cudaStream_t stream_;
  index_t window_rows_;
  float scale_ = 1.0f;
  int multiprocessors_ = 1;
  std::size_t shared_limit_ = 48 * 1024;
  state_type* states_ = nullptr;
  std::int32_t* budgets_ = nullptr;
  detail::device_status* status_ = nullptr;
  detail::eviction_record* records_ = nullptr;
  std::int32_t* attention_arrivals_ = nullptr;
  std::int32_t* update_arrivals_ = nullptr;
  std::int32_t generation_ = 1;
  detail::decode_kernel<T, Layout> decode_{};
  int splits_ = 1;
  int head_chunks_ = 1;
  bool vector_rows_ = false;
  bool programmatic_ = false;
  std::byte* workspace_ = nullptr;
  detail::workspace_plan plan_{};
  device_rank_group ranks_{};  // tensor-parallel group (one rank by default)
  bool compressed_ = false;  // compress_prefill() ran
  bool decoding_ = false;    // append() ran
  index_t layers_compressed_ = 0;  // layers compress_prefill_layer() compressed (in order)
};

}  // namespace cuda
KVCOMPACT_NAMESPACE_END
