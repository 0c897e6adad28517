// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Key-channel pruning on the GPU (ThinK): kvcompact::cuda::key_pruning selects each head's key
/// channels after token selection, stores the kept slots' keys thin, appends decode tokens and attends
/// over the kept channels. Same rules as kvcompact/cpu/key_pruning.hpp.
#pragma once

#include <kvcompact/channels/concepts.hpp>
#include <kvcompact/cpu/key_pruning.hpp>
#include <kvcompact/cuda/check.cuh>
#include <kvcompact/cuda/detail/key_pruning_kernels.cuh>
#include <kvcompact/cuda/detail/launch.cuh>

#include <cstddef>
#include <span>

KVCOMPACT_NAMESPACE_BEGIN

namespace cuda {

/// @brief Runs key-channel pruning and decode attention over pruned keys on the GPU, over device
/// memory: a kv_cache whose values, lengths and positions stay in use and a kvcompact::pruned_keys
/// store for its keys. Kernels check the lengths they read; check() raises what they found.
///
/// Typical use: prefill, compress tokens with any cuda::session, then prune(selector, window); at each
/// decode step append() the new token and attend().
/// @tparam T storage element @tparam Layout a kvcompact::kv_layout
template <class T, class Layout>
class key_pruning {
  static_assert(::kvcompact::detail::check_layout<Layout>(), "kvcompact: cuda::key_pruning<T, Layout>: Layout is not a kvcompact::kv_layout");

 public:
  /// @brief Workspace bytes: a fault record and [sequences][query_heads][capacity] floats of logits.
  /// @param layout the cache layout @param shape the model's query heads
  /// @return the byte count
  [[nodiscard]] static std::size_t workspace_bytes(const Layout& layout, const attention_shape& shape) {
    ::kvcompact::detail::validate_layout_extents(layout, "cuda::key_pruning::workspace_bytes");
    shape.validate(layout.num_kv_heads(), layout.head_dim(), "cuda::key_pruning::workspace_bytes");
    return status_bytes + static_cast<std::size_t>(layout.num_sequences() * shape.query_heads * layout.capacity()) * sizeof(float);
  }

  /// @brief Binds a device cache and store and checks their extents.
  /// @param cache device cache (values, lengths, positions; keys are read by prune() only)
  /// @param pruned device pruned-key store shaped like @p cache
  /// @param shape query heads and scale (0: 1 / sqrt(head_dim))
  /// @param workspace device memory of workspace_bytes() bytes
  /// @param stream the stream every call runs on
  /// @throws kvcompact::error naming the bad argument
  key_pruning(const kv_cache<T, Layout>& cache, const pruned_keys<T>& pruned, const attention_shape& shape, std::span<std::byte> workspace,
              cudaStream_t stream = nullptr)
      : cache_(cache), pruned_(pruned), shape_(shape), stream_(stream) {
    constexpr const char* where = "cuda::key_pruning";
    ::kvcompact::detail::validate_layout_extents(cache.layout, where);
    ::kvcompact::detail::require(cache.values != nullptr && cache.lengths != nullptr && cache.positions != nullptr, where, "cache",
                                 "values, lengths and positions must be device pointers");
    shape.validate(cache.layout.num_kv_heads(), cache.layout.head_dim(), where);
    pruned.validate(cache.layout.num_sequences(), cache.layout.num_layers(), cache.layout.num_kv_heads(), cache.layout.head_dim(), where);
    ::kvcompact::detail::require(workspace.data() != nullptr && workspace.size() >= workspace_bytes(cache.layout, shape), where, "workspace",
                                 "smaller than workspace_bytes()");
    status_ = reinterpret_cast<detail::device_status*>(workspace.data());
    logits_ = reinterpret_cast<float*>(workspace.data() + status_bytes);
    cuda::check(cudaMemsetAsync(status_, 0, sizeof(detail::device_status), stream_), where, "cudaMemsetAsync(status)");
  }

  /// @brief Selects every head's key channels from @p window and the cache's keys and fills the store
  /// (cpu::prune_key_channels' rule, one block per KV head).
  /// @param selector a kvcompact::channel_selector with kept_channels(head_dim) == pruned.kept
  /// @param window device observation window (the prefill's last queries)
  /// @throws kvcompact::error naming a bad argument; faults found by the kernel surface in check()
  template <class Selector>
  void prune(const Selector& selector, const query_window& window) {
    static_assert(::kvcompact::detail::check_channel_selector<Selector>(), "kvcompact: cuda::key_pruning::prune: Selector is not a kvcompact::channel_selector");
    constexpr const char* where = "cuda::key_pruning::prune";
    selector.validate(where);
    const auto& layout = cache_.layout;
    ::kvcompact::detail::require(cache_.keys != nullptr, where, "cache.keys", "null pointer");
    ::kvcompact::detail::require(pruned_.kept == selector.kept_channels(layout.head_dim()), where, "pruned.kept", "differs from the selector's kept_channels(head_dim)");
    ::kvcompact::detail::require(window.queries != nullptr && window.rows > 0, where, "window", "needs queries and a positive row count");
    ::kvcompact::detail::require(window.head_dim == 0 || window.head_dim == layout.head_dim(), where, "window.head_dim", "differs from the cache's head_dim");
    const std::size_t shared = detail::selection_shared_bytes(layout.head_dim());
    auto kernel = detail::select_channels_kernel<Selector, T, Layout>;
    detail::allow_shared_memory(kernel, shared, where);
    detail::launch(kernel,
                   dim3(detail::grid_extent(layout.num_kv_heads(), where, "kv_heads"), detail::grid_extent(layout.num_layers(), where, "layers"),
                        detail::grid_extent(layout.num_sequences(), where, "sequences")),
                   dim3(detail::pruning_threads), shared, stream_, problem(), window, selector, selector.unpruned_tail());
    detail::check_launch(where, "select_channels_kernel");
  }

  /// @brief Appends one decode token per sequence to every KV head of a storage layer: keys as tail rows,
  /// values and positions into the cache (no eviction).
  /// @param layer storage layer @param keys [sequences][kv_heads][head_dim] @param values same shape
  /// @param positions [sequences] token positions; a negative position skips the sequence
  void append(index_t layer, const T* keys, const T* values, const std::int32_t* positions) {
    constexpr const char* where = "cuda::key_pruning::append";
    check_layer(layer, where);
    ::kvcompact::detail::require(keys != nullptr && values != nullptr && positions != nullptr, where, "keys", "keys, values and positions must be device pointers");
    detail::launch(detail::append_pruned_kernel<T, Layout>,
                   dim3(detail::grid_extent(cache_.layout.num_kv_heads(), where, "kv_heads"), detail::grid_extent(cache_.layout.num_sequences(), where, "sequences")),
                   dim3(detail::pruning_threads), 0, stream_, problem(), layer, keys, values, positions);
    detail::check_launch(where, "append_pruned_kernel");
  }

  /// @brief Decode attention of one token per sequence over the pruned keys of a storage layer.
  /// @param layer storage layer @param queries [sequences][query_heads][head_dim] fp32
  /// @param positions [sequences] query positions; a negative position skips the sequence
  /// @param output [sequences][query_heads][head_dim] fp32
  void attend(index_t layer, const float* queries, const std::int32_t* positions, float* output) {
    constexpr const char* where = "cuda::key_pruning::attend";
    check_layer(layer, where);
    ::kvcompact::detail::require(queries != nullptr && positions != nullptr && output != nullptr, where, "queries", "queries, positions and output must be device pointers");
    const index_t dims = cache_.layout.head_dim();
    const std::size_t shared = detail::pruned_attention_shared_bytes(dims, pruned_.kept);
    auto kernel = detail::attend_pruned_kernel<T, Layout>;
    detail::allow_shared_memory(kernel, shared, where);
    detail::launch(kernel,
                   dim3(detail::grid_extent(shape_.query_heads, where, "query_heads"), detail::grid_extent(cache_.layout.num_sequences(), where, "sequences")),
                   dim3(detail::pruning_threads), shared, stream_, problem(), layer, queries, positions, ::kvcompact::detail::logit_scale(shape_, dims), logits_,
                   output);
    detail::check_launch(where, "attend_pruned_kernel");
  }

  /// @brief Waits for the stream and raises the first fault the kernels recorded (then clears it).
  /// @throws kvcompact::error describing the fault
  void check() { detail::raise_recorded(status_, stream_, "cuda::key_pruning::check"); }

 private:
  static constexpr std::size_t status_bytes = 256;  // the fault record, padded so the logits stay aligned
  static_assert(sizeof(detail::device_status) <= status_bytes);

  detail::pruning_problem<T, Layout> problem() const { return {cache_, pruned_, shape_.query_heads, status_}; }
  void check_layer(index_t layer, const char* where) const {
    ::kvcompact::detail::require(layer >= 0 && layer < cache_.layout.num_layers(), where, "layer", "out of range");
  }

  kv_cache<T, Layout> cache_;
  pruned_keys<T> pruned_;
  attention_shape shape_;
  cudaStream_t stream_;
  detail::device_status* status_ = nullptr;
  float* logits_ = nullptr;
};

}  // namespace cuda

KVCOMPACT_NAMESPACE_END
