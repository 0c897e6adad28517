// SPDX-License-Identifier: Apache-2.0
// GPU decode loop with kvcompact's CUDA kernels: a batch of sequences with different prompt
// lengths in a bf16 cache on the device; every preset compresses the prefilled cache on the GPU,
// then decodes with the fused attention + scoring kernel and decode-time eviction, batched over the
// sequences, without host synchronisation inside the loop. Prints KV memory, the attention-output
// error against the uncompressed cache, and the decode time per step (all layers, all sequences).
// The token stream is synthetic (synthetic_model.hpp).
//
//   gpu_decode [--small]
#include <kvcompact/cuda.cuh>

#include "synthetic_model.hpp"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace kc = kvcompact;

namespace {

struct config {
  int layers = 4, kv_heads = 2, query_heads = 8, head_dim = 64, window = 32, decode_steps = 64;
  std::vector<int> prompts{1024, 960, 768, 512};
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
  std::vector<element> keys, values;                 // prefilled cache, BHSD [seq][layer][head][slot][dim]
  std::vector<std::int32_t> lengths, positions;      // [seq][layer][head], [seq][layer][head][slot]
  std::vector<float> window;                         // [seq][layer][qhead][row][dim]
  std::vector<std::int32_t> window_positions;        // [seq][row]
  std::vector<element> step_keys, step_values;       // [step][layer][seq][head][dim]
  std::vector<element> step_queries;                 // [step][layer][seq][qhead][dim]
  std::vector<std::int32_t> step_positions;          // [step][seq]

  explicit inputs(const config& c) {
    const std::size_t S = c.prompts.size(), L = c.layers, H = c.kv_heads, G = c.query_heads, D = c.head_dim, N = c.capacity();
    const std::size_t R = c.window, T = c.decode_steps;
    keys.assign(S * L * H * N * D, kc::from_float<element>(0.0f));
    values = keys;
    lengths.assign(S * L * H, 0);
    positions.assign(S * L * H * N, 0);
    window.assign(S * L * G * R * D, 0.0f);
    window_positions.assign(S * R, 0);
    step_keys.assign(T * L * S * H * D, kc::from_float<element>(0.0f));
    step_values = step_keys;
    step_queries.assign(T * L * S * G * D, kc::from_float<element>(0.0f));
    step_positions.assign(T * S, 0);
    for (std::size_t s = 0; s < S; ++s) {
      const int prompt = c.prompts[s];
      const example::synthetic_model model(c.layers, c.kv_heads, c.query_heads, c.head_dim, prompt + c.decode_steps, 2026u + static_cast<unsigned>(s));
      for (std::size_t l = 0; l < L; ++l)
        for (std::size_t h = 0; h < H; ++h) {
          lengths[(s * L + l) * H + h] = prompt;
          for (int t = 0; t < prompt; ++t) {
            const std::size_t slot = ((s * L + l) * H + h) * N + static_cast<std::size_t>(t);
            positions[slot] = t;
            for (std::size_t d = 0; d < D; ++d) {
              keys[slot * D + d] = kc::from_float<element>(model.key(t, static_cast<int>(l), static_cast<int>(h))[d]);
              values[slot * D + d] = kc::from_float<element>(model.value(t, static_cast<int>(l), static_cast<int>(h))[d]);
            }
          }
          for (std::size_t step = 0; step < T; ++step)
            for (std::size_t d = 0; d < D; ++d) {
              const int t = prompt + static_cast<int>(step);
              step_keys[(((step * L + l) * S + s) * H + h) * D + d] = kc::from_float<element>(model.key(t, static_cast<int>(l), static_cast<int>(h))[d]);
              step_values[(((step * L + l) * S + s) * H + h) * D + d] =
                  kc::from_float<element>(model.value(t, static_cast<int>(l), static_cast<int>(h))[d]);
            }
        }
      for (std::size_t r = 0; r < R; ++r) {
        const int t = prompt - static_cast<int>(R) + static_cast<int>(r);
        window_positions[s * R + r] = t;
        for (std::size_t l = 0; l < L; ++l)
          for (std::size_t e = 0; e < G * D; ++e) window[((s * L + l) * G + e / D) * R * D + r * D + e % D] = model.query(t, static_cast<int>(l))[e];
      }
      for (std::size_t step = 0; step < T; ++step) {
        const int t = prompt + static_cast<int>(step);
        step_positions[step * S + s] = t;
        for (std::size_t l = 0; l < L; ++l)
          for (std::size_t e = 0; e < G * D; ++e)
            step_queries[((step * L + l) * S + s) * G * D + e] = kc::from_float<element>(model.query(t, static_cast<int>(l))[e]);
      }
    }
  }
};

struct outcome {
  std::vector<float> outputs;  // [step][layer][seq][qhead][dim]
  std::size_t kv_bytes = 0;    // occupied K and V bytes after decoding
  double ms_per_step = 0.0;    // all layers, all sequences
};

template <class Policy>
outcome run(const Policy& policy, const config& c, const inputs& in, bool compress) {
  const kc::index_t S = c.sequences(), L = c.layers, H = c.kv_heads, G = c.query_heads, D = c.head_dim;
  device_buffer<element> keys(in.keys), values(in.values);
  device_buffer<std::int32_t> lengths(in.lengths), positions(in.positions);
  const auto layout = kc::layouts::bhsd(S, L, H, c.capacity(), D);
  using session_type = kc::cuda::session<Policy, element, kc::layouts::strided>;
  const kc::attention_shape shape{G};
  device_buffer<std::byte> state(session_type::state_bytes(layout)), workspace(session_type::workspace_bytes(layout, shape, c.window));
  session_type session(policy, {layout, keys.data, values.data, lengths.data, positions.data}, shape, state.bytes(), workspace.bytes(), nullptr,
                       c.window);
  if (compress) {
    device_buffer<float> window(in.window);
    device_buffer<std::int32_t> window_positions(in.window_positions);
    session.compress_prefill({window.data, window_positions.data, c.window});
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
  for (std::int32_t n : lengths.download()) result.kv_bytes += static_cast<std::size_t>(n) * static_cast<std::size_t>(D) * 2 * sizeof(element);
  result.ms_per_step = std::chrono::duration<double, std::milli>(stop - start).count() / c.decode_steps;
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  config c;
  if (argc > 1 && !std::strcmp(argv[1], "--small")) {
    c.layers = 2;
    c.decode_steps = 8;
    c.prompts = {160, 128};
    c.window = 16;
  }
  if (kc::cuda::device_count() == 0) {
    std::puts("gpu_decode: no CUDA device present; this example needs a GPU.");
    return 77;
  }
  const inputs in(c);
  const outcome full = run(kc::policies::streaming_llm(c.capacity()), c, in, false);
  std::printf("GPU decode: %d sequences (prompts", c.sequences());
  for (int p : c.prompts) std::printf(" %d", p);
  std::printf("), %d layers, %d query heads, %d KV heads, head_dim %d, bf16, %d decode steps\n", c.layers, c.query_heads, c.kv_heads, c.head_dim,
              c.decode_steps);
  std::printf("budget: slots per head as a share of the shortest prompt\n%-14s %8s %12s %9s %22s %12s\n", "policy", "budget", "KV bytes", "of full",
              "attention rel. error", "ms / step");
  std::printf("%-14s %8s %12zu %8.1f%% %22.4f %12.3f\n", "full", "-", full.kv_bytes, 100.0, 0.0, full.ms_per_step);
  for (const double fraction : {0.2, 0.5}) {
    const kc::index_t budget = static_cast<kc::index_t>(fraction * c.prompts.back());
    for (std::string_view name : kc::policies::preset_names) {
      const kc::policies::preset_options options{budget, c.prompts.back(), c.window, 4, 2};
      const outcome result = kc::policies::with_preset(name, options, [&](const auto& policy) { return run(policy, c, in, true); });
      std::printf("%-14s %7.0f%% %12zu %8.1f%% %22.4f %12.3f\n", std::string(name).c_str(), fraction * 100, result.kv_bytes,
                  100.0 * static_cast<double>(result.kv_bytes) / static_cast<double>(full.kv_bytes),
                  example::relative_error(result.outputs, full.outputs), result.ms_per_step);
    }
  }
  return 0;
}
