// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Device copies of the test caches (kvtest::layout_cache), layouts whose page tables live in
/// device memory, and device buffers for session state and workspace. Uses only the CUDA runtime
/// API, so it works on a GPU and under the emulator alike.
#pragma once

#include "support/custom_layout.hpp"

#include <kvcompact/cuda/check.cuh>
#include <kvcompact/layouts/flashinfer_paged.hpp>
#include <kvcompact/layouts/layer_condensed.hpp>
#include <kvcompact/layouts/paged.hpp>
#include <kvcompact/layouts/strided.hpp>
#include <kvcompact/layouts/vllm_paged.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace kvtest {

/// @brief An owned device array.
template <class T>
class device_array {
 public:
  device_array() = default;
  /// @brief Allocates @p count elements (contents undefined).
  explicit device_array(std::size_t count) : size_(count) {
    if (count) KVCOMPACT_CUDA_CHECK(cudaMalloc(&data_, count * sizeof(T)));
  }
  /// @brief Allocates and uploads @p host.
  explicit device_array(const std::vector<T>& host) : device_array(host.size()) { upload(host); }
  device_array(device_array&& other) noexcept : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  device_array& operator=(device_array&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
  ~device_array() {
    if (data_) (void)cudaFree(data_);
  }
  /// @brief Copies @p host (same size) to the device.
  void upload(const std::vector<T>& host) {
    if (size_) KVCOMPACT_CUDA_CHECK(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  /// @brief Copies the array to the host.
  std::vector<T> download() const {
    std::vector<T> host(size_);
    if (size_) KVCOMPACT_CUDA_CHECK(cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  T* data() const { return data_; }
  std::size_t size() const { return size_; }
  /// @brief The array as bytes (for session state and workspace).
  std::span<std::byte> bytes() const { return {reinterpret_cast<std::byte*>(data_), size_ * sizeof(T)}; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// @brief A layout whose page table (if any) has been copied to device memory.
template <class Layout>
struct device_layout {
  Layout layout;                      ///< points into table for paged layouts
  device_array<std::int32_t> table;   ///< device copy of the block table (empty for strided layouts)
  device_array<std::int32_t> table2;  ///< device copy of a second table (FlashInfer's page indices)
  device_array<kvcompact::index_t> layer_offsets;  ///< device copy of per-layer offsets (engine layouts)
};

/// @brief Layouts without tables are used as they are.
template <class Layout>
device_layout<Layout> to_device(const Layout& layout) {
  return {layout, {}, {}, {}};
}
/// @brief Paged layouts get a device copy of their block table.
inline device_layout<kvcompact::layouts::paged> to_device(const kvcompact::layouts::paged& layout) {
  std::vector<std::int32_t> table(layout.block_table, layout.block_table + layout.sequences * layout.table_stride);
  device_layout<kvcompact::layouts::paged> out{layout, device_array<std::int32_t>(table), {}, {}};
  out.layout.block_table = out.table.data();
  return out;
}
/// @brief vLLM layouts get device copies of their block table and layer offsets.
inline device_layout<kvcompact::layouts::vllm_paged> to_device(const kvcompact::layouts::vllm_paged& layout) {
  std::vector<std::int32_t> table(layout.block_table, layout.block_table + layout.num_seqs * layout.block_table_stride);
  std::vector<kvcompact::index_t> offsets(layout.layer_offsets, layout.layer_offsets + layout.layers);
  device_layout<kvcompact::layouts::vllm_paged> out{layout, device_array<std::int32_t>(table), {}, device_array<kvcompact::index_t>(offsets)};
  out.layout.block_table = out.table.data();
  out.layout.layer_offsets = out.layer_offsets.data();
  return out;
}
/// @brief FlashInfer layouts get device copies of indptr, indices and layer offsets.
inline device_layout<kvcompact::layouts::flashinfer_paged> to_device(const kvcompact::layouts::flashinfer_paged& layout) {
  std::vector<std::int32_t> indptr(layout.indptr, layout.indptr + layout.batch_size + 1);
  std::vector<std::int32_t> indices(layout.indices, layout.indices + indptr.back());
  std::vector<kvcompact::index_t> offsets(layout.layer_offsets, layout.layer_offsets + layout.layers);
  device_layout<kvcompact::layouts::flashinfer_paged> out{layout, device_array<std::int32_t>(indptr), device_array<std::int32_t>(indices),
                                                          device_array<kvcompact::index_t>(offsets)};
  out.layout.indptr = out.table.data();
  out.layout.indices = out.table2.data();
  out.layout.layer_offsets = out.layer_offsets.data();
  return out;
}
/// @brief Layer-condensed layouts convert their inner layout.
template <class Inner>
device_layout<kvcompact::layouts::layer_condensed<Inner>> to_device(const kvcompact::layouts::layer_condensed<Inner>& layout) {
  device_layout<Inner> inner = to_device(layout.inner);
  device_layout<kvcompact::layouts::layer_condensed<Inner>> out{
      {inner.layout, layout.map}, std::move(inner.table), std::move(inner.table2), std::move(inner.layer_offsets)};
  return out;
}

/// @brief Device copy of a host test cache.
template <class T, class Layout>
struct device_cache {
  device_layout<Layout> layout;             ///< layout with device tables
  device_array<T> keys, values;             ///< K and V
  device_array<std::int32_t> lengths;       ///< [s][l][h]
  device_array<std::int32_t> positions;     ///< [s][l][h][capacity]

  explicit device_cache(const layout_cache<T, Layout>& host)
      : layout(to_device(host.layout)), keys(host.keys), values(host.values), lengths(host.lengths), positions(host.positions) {}
  /// @brief The library view over the device arrays.
  kvcompact::kv_cache<T, Layout> view() const { return {layout.layout, keys.data(), values.data(), lengths.data(), positions.data()}; }
  /// @brief A host cache (same host layout as @p like) holding the device contents.
  layout_cache<T, Layout> download(const layout_cache<T, Layout>& like) const {
    return {like.layout, keys.download(), values.download(), lengths.download(), positions.download()};
  }
};

/// @brief Device state and workspace of a kvcompact::cuda::session.
template <class Session>
struct device_session_storage {
  device_array<std::byte> state;      ///< state_bytes()
  device_array<std::byte> workspace;  ///< workspace_bytes()
  template <class Layout>
  device_session_storage(const Layout& layout, const kvcompact::attention_shape& shape, kvcompact::index_t window_rows)
      : state(Session::state_bytes(layout)), workspace(Session::workspace_bytes(layout, shape, window_rows)) {}
};

/// @brief Device copy of an observation window (fp32 queries and positions).
struct device_window {
  device_array<float> queries;           ///< [s][l][g][r][d]
  device_array<std::int32_t> positions;  ///< [s][r]
  kvcompact::index_t rows = 0;           ///< rows
  explicit device_window(const random_window& w) : queries(w.queries), positions(w.positions), rows(w.rows) {}
  /// @brief The library view.
  kvcompact::query_window view() const { return {queries.data(), positions.data(), rows}; }
};

/// @brief A kvcompact::cuda::session over a device copy of a host cache, with its own state and
/// workspace, after compress_prefill() with @p window: where the decode-loop tests start.
template <class Session, class T, class Layout>
struct prefilled_device_session {
  device_cache<T, Layout> cache;            ///< the device K/V the session works on
  device_window rows;                       ///< the prefill window
  device_session_storage<Session> storage;  ///< state and workspace
  Session session;                          ///< the session, prefill done

  template <class Policy>
  prefilled_device_session(const Policy& policy, const layout_cache<T, Layout>& host, const random_window& window, const kvcompact::attention_shape& shape)
      : cache(host), rows(window), storage(cache.layout.layout, shape, window.rows),
        session(policy, cache.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, window.rows) {
    session.compress_prefill(rows.view());
  }
};

}  // namespace kvtest
