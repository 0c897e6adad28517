// SPDX-License-Identifier: Apache-2.0
// GPU decode loop with kvcompact's CUDA kernels: a batch of sequences with different prompt
// lengths in a bf16 cache on the device; every preset compresses the prefilled cache on the GPU,
// then decodes with the fused attention + scoring kernel and decode-time eviction, batched over the
// sequences, without host synchronisation inside the loop. Each sequence is a synthetic document
// with a needle (synthetic_model.hpp); the table shows the KV memory kept, in how many (sequence,
// layer, KV head) caches the needle survived, the attention-output error against the full cache on
// the question tokens (the answer) and on the others, and the decode time per step (all layers,
// all sequences).
//
//   gpu_decode [--small]
// ctest: --small
#include <kvcompact/cuda.cuh>

#include "synthetic_model.hpp"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace kc = kvcompact;

namespace {

struct config {
  int layers = 4, kv_heads = 2, query_heads = 8, head_dim = 64, question = 32, decode_steps = 64;
  std::vector<int> prompts{1024, 960, 768, 512};
  /// Prompt queries compression looks at: the last `question` ones, or (H2O, KVMerger, CaM: the
  /// methods that sum attention over the whole prompt) as many as the shortest prompt has.
  /// Rows of the observation window @p policy wants (kvcompact::window_need): every prompt query, the question, or none.
  template <class Policy>
  int window_rows(const Policy& policy) const { return static_cast<int>(kc::window_rows_for(policy, prompts.back(), question)); }
  int capacity() const { return prompts.front() + decode_steps; }
  int sequences() const { return static_cast<int>(prompts.size()); }
};

template <class T>
struct device_buffer {
  T* data = nullptr;
  std::size_t count = 0;
  explicit device_buffer(std::size_t n) : count(n) { KVCOMPACT_CUDA_CHECK(cudaMalloc(&data, n * sizeof(T))); }
  explicit device_buffer(const std::vector<T>& host) : device_buffer(host.size()) { upload(host); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { (void)cudaFree(data); }
  void upload(const std::vector<T>& host) { KVCOMPACT_CUDA_CHECK(cudaMemcpy(data, host.data(), count * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> download() const {
    std::vector<T> host(count);
    KVCOMPACT_CUDA_CHECK(cudaMemcpy(host.data(), data, count * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  std::span<std::byte> bytes() const { return {reinterpret_cast<std::byte*>(data), count * sizeof(T)}; }
};

using element = kc::bfloat16_t;

/// Host-side inputs of the whole run, laid out as the device calls take them.
struct inputs {
  std::vector<example::synthetic_document> documents;  // one per sequence
  std::vector<element> keys, values;                   // prefilled cache in layouts::bhsd ([layer][seq][head][slot][dim])
  std::vector<std::int32_t> lengths, positions;        // [seq][layer][head], [seq][layer][head][slot]
  std::vector<element> step_keys, step_values;         // [step][layer][seq][head][dim]
  std::vector<element> step_queries;                   // [step][layer][seq][qhead][dim]
  std::vector<std::int32_t> step_positions;            // [step][seq]

  explicit inputs(const config& c) {
    const std::size_t S = c.prompts.size(), L = c.layers, H = c.kv_heads, G = c.query_heads, D = c.head_dim, N = c.capacity();
    const std::size_t T = c.decode_steps;
    const auto layout = kc::layouts::bhsd(c.sequences(), c.layers, c.kv_heads, c.capacity(), c.head_dim);
    keys.assign(S * L * H * N * D, kc::from_float<element>(0.0f));
    values = keys;
    lengths.assign(S * L * H, 0);
    positions.assign(S * L * H * N, 0);
    step_keys.assign(T * L * S * H * D, kc::from_float<element>(0.0f));
    step_values = step_keys;
    step_queries.assign(T * L * S * G * D, kc::from_float<element>(0.0f));
    step_positions.assign(T * S, 0);
    for (std::size_t s = 0; s < S; ++s) {
      const int prompt = c.prompts[s];
      const auto& doc = documents.emplace_back(c.layers, c.kv_heads, c.query_heads, c.head_dim, prompt, c.decode_steps, c.question,
                                               2026u + static_cast<unsigned>(s));
      for (std::size_t l = 0; l < L; ++l)
        for (std::size_t h = 0; h < H; ++h) {
          lengths[(s * L + l) * H + h] = prompt;
          for (int t = 0; t < prompt; ++t) {
            positions[((s * L + l) * H + h) * N + static_cast<std::size_t>(t)] = t;  // kv_cache order [seq][layer][head][slot]
            const auto at = static_cast<std::size_t>(layout.offset(static_cast<kc::index_t>(s), static_cast<kc::index_t>(l), static_cast<kc::index_t>(h), t));
            for (std::size_t d = 0; d < D; ++d) {
              keys[at + d] = kc::from_float<element>(doc.key(t, static_cast<int>(l), static_cast<int>(h))[d]);
              values[at + d] = kc::from_float<element>(doc.value(t, static_cast<int>(l), static_cast<int>(h))[d]);
            }
          }
          for (std::size_t step = 0; step < T; ++step)
            for (std::size_t d = 0; d < D; ++d) {
              const int t = prompt + static_cast<int>(step);
              step_keys[(((step * L + l) * S + s) * H + h) * D + d] = kc::from_float<element>(doc.key(t, static_cast<int>(l), static_cast<int>(h))[d]);
              step_values[(((step * L + l) * S + s) * H + h) * D + d] = kc::from_float<element>(doc.value(t, static_cast<int>(l), static_cast<int>(h))[d]);
            }
        }
      for (std::size_t step = 0; step < T; ++step) {
        const int t = prompt + static_cast<int>(step);
        step_positions[step * S + s] = t;
        for (std::size_t l = 0; l < L; ++l)
          for (std::size_t e = 0; e < G * D; ++e)
            step_queries[((step * L + l) * S + s) * G * D + e] = kc::from_float<element>(doc.query(t, static_cast<int>(l))[e]);
      }
    }
  }

  /// The last `rows` prompt queries of every sequence and layer, [seq][layer][qhead][row][dim], and their positions [seq][row].
  void window(const config& c, int rows, std::vector<float>& queries, std::vector<std::int32_t>& rows_positions) const {
    const std::size_t S = c.prompts.size(), L = c.layers, G = c.query_heads, D = c.head_dim, R = static_cast<std::size_t>(rows);
    queries.assign(S * L * G * R * D, 0.0f);
    rows_positions.assign(S * R, 0);
    for (std::size_t s = 0; s < S; ++s)
      for (std::size_t r = 0; r < R; ++r) {
        const int t = c.prompts[s] - rows + static_cast<int>(r);
        rows_positions[s * R + r] = t;
        for (std::size_t l = 0; l < L; ++l)
          for (std::size_t e = 0; e < G * D; ++e)
            queries[((s * L + l) * G + e / D) * R * D + r * D + e % D] = documents[s].query(t, static_cast<int>(l))[e];
      }
  }
};

struct outcome {
  std::vector<float> outputs;  // [step][layer][seq][qhead][dim]
  std::size_t kv_bytes = 0;    // occupied K and V bytes after decoding
  double needle_kept = 0.0;    // share of (sequence, layer, KV head) caches still holding their needle
  double ms_per_step = 0.0;    // all layers, all sequences
};

/// Compresses with the last `rows` prompt queries (0: a policy that reads none; negative: no compression), then decodes.
template <class Policy>
outcome run(const Policy& policy, const config& c, const inputs& in, int rows) {
  const kc::index_t S = c.sequences(), L = c.layers, H = c.kv_heads, G = c.query_heads, D = c.head_dim;
  device_buffer<element> keys(in.keys), values(in.values);
  device_buffer<std::int32_t> lengths(in.lengths), positions(in.positions);
  const auto layout = kc::layouts::bhsd(S, L, H, c.capacity(), D);
  using session_type = kc::cuda::session<Policy, element, kc::layouts::strided>;
  const kc::attention_shape shape{G};
  const int workspace_rows = rows > 0 ? rows : 1;
  device_buffer<std::byte> state(session_type::state_bytes(layout)), workspace(session_type::workspace_bytes(layout, shape, workspace_rows));
  session_type session(policy, {layout, keys.data, values.data, lengths.data, positions.data}, shape, state.bytes(), workspace.bytes(), nullptr,
                       workspace_rows);
  if (rows == 0) {
    session.compress_prefill();
    session.check("compress_prefill");
  } else if (rows > 0) {
    std::vector<float> host_queries;
    std::vector<std::int32_t> host_positions;
    in.window(c, rows, host_queries, host_positions);
    device_buffer<float> window(host_queries);
    device_buffer<std::int32_t> window_positions(host_positions);
    session.compress_prefill({window.data, window_positions.data, rows});
    session.check("compress_prefill");
  }
  device_buffer<element> step_keys(in.step_keys), step_values(in.step_values), step_queries(in.step_queries);
  device_buffer<std::int32_t> step_positions(in.step_positions);
  device_buffer<element> output(static_cast<std::size_t>(c.decode_steps) * L * S * G * D);
  KVCOMPACT_CUDA_CHECK(cudaDeviceSynchronize());
  const auto start = std::chrono::steady_clock::now();
  for (kc::index_t step = 0; step < c.decode_steps; ++step)
    for (kc::index_t l = 0; l < L; ++l) {
      const std::size_t kv = static_cast<std::size_t>((step * L + l) * S * H * D), q = static_cast<std::size_t>((step * L + l) * S * G * D);
      session.append(l, step_keys.data + kv, step_values.data + kv, step_positions.data + step * S);
      session.attend(l, step_queries.data + q, step_positions.data + step * S, output.data + q);
    }
  session.check("decode");
  const auto stop = std::chrono::steady_clock::now();
  outcome result;
  for (const element& x : output.download()) result.outputs.push_back(kc::to_float(x));
  const std::vector<std::int32_t> kept = lengths.download(), where = positions.download();
  int holding = 0;
  for (std::size_t head = 0; head < kept.size(); ++head) {
    result.kv_bytes += static_cast<std::size_t>(kept[head]) * static_cast<std::size_t>(D) * 2 * sizeof(element);
    const int needle = in.documents[head / static_cast<std::size_t>(L * H)].needle;
    for (std::int32_t j = 0; j < kept[head]; ++j) holding += where[head * static_cast<std::size_t>(c.capacity()) + static_cast<std::size_t>(j)] == needle;
  }
  result.needle_kept = static_cast<double>(holding) / static_cast<double>(kept.size());
  result.ms_per_step = std::chrono::duration<double, std::milli>(stop - start).count() / c.decode_steps;
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  config c;
  if (argc > 1 && !std::strcmp(argv[1], "--small")) {
    c.layers = 2;
    c.head_dim = 32;
    c.decode_steps = 6;
    c.prompts = {128, 96};
    c.question = 16;
  }
  if (kc::cuda::device_count() == 0) {
    std::puts("gpu_decode: no CUDA device present; this example needs a GPU.");
    return 77;
  }
  const inputs in(c);
  const outcome full = run(kc::policies::streaming_llm(c.capacity()), c, in, -1);
  const std::size_t per_step = static_cast<std::size_t>(c.layers) * c.sequences() * c.query_heads * c.head_dim;
  std::printf("GPU decode: %d sequences (prompts", c.sequences());
  for (int p : c.prompts) std::printf(" %d", p);
  std::printf("), %d layers, %d query heads, %d KV heads, head_dim %d, bf16, %d decode steps\n", c.layers, c.query_heads, c.kv_heads, c.head_dim,
              c.decode_steps);
  std::printf("budget: slots per head as a share of the shortest prompt\n%-14s %7s %9s %12s %13s %12s %10s\n", "policy", "budget", "KV kept",
              "needle kept", "answer error", "other error", "ms / step");
  std::printf("%-14s %7s %8.1f%% %11.0f%% %13.3f %12.3f %10.3f\n", "full", "-", 100.0, 100.0 * full.needle_kept, 0.0, 0.0, full.ms_per_step);
  for (const double fraction : {0.1, 0.25}) {
    const kc::index_t budget = static_cast<kc::index_t>(fraction * c.prompts.back());
    for (std::string_view name : kc::policies::preset_names) {
      kc::policies::preset_options options{budget, c.prompts.back()};
      options.window = c.question;
      options.layer_group = 2;
      const outcome result = kc::policies::with_preset(name, options, [&](const auto& policy) { return run(policy, c, in, c.window_rows(policy)); });
      const example::output_errors error = example::errors_against(result.outputs, full.outputs, in.documents.front(), per_step);
      std::printf("%-14s %6.0f%% %8.1f%% %11.0f%% %13.3f %12.3f %10.3f\n", std::string(name).c_str(), fraction * 100,
                  100.0 * static_cast<double>(result.kv_bytes) / static_cast<double>(full.kv_bytes), 100.0 * result.needle_kept, error.answer,
                  error.other, result.ms_per_step);
    }
  }
  return 0;
}
