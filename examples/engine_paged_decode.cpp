// SPDX-License-Identifier: Apache-2.0
// A paged decode loop with kvcompact, as an engine writes it: vLLM's cache layout (one
// [2, num_blocks, block_size, kv_heads, head_dim] tensor per layer, block tables, a block pool) and a
// batch of three requests with prompts of different lengths.
//  1. prefill: the engine writes each prompt's K and V through its block table (vLLM's slot mapping);
//  2. compression: SnapKV keeps `budget` slots per head of every request; the engine returns the
//     blocks past each request's longest head to its pool;
//  3. decode: every step appends each request's new token (the engine first adds a block when the
//     request's longest head has filled its last one) and attends.
// The model is a stand-in that draws K, V and Q at random; the cache handling is the point.
#include <kvcompact/kvcompact.hpp>

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

namespace kc = kvcompact;

int main() {
  constexpr int layers = 4, kv_heads = 2, query_heads = 8, head_dim = 32, block_size = 16;
  constexpr int num_blocks = 64, max_blocks_per_seq = 24, budget = 64, window = 16, generate = 40;
  const std::vector<int> prompts{300, 170, 90};
  const int num_seqs = static_cast<int>(prompts.size());

  // The engine's memory: per-layer tensors (here one after the other in one allocation), a block pool
  // and a block table. Unused table entries hold block 0, as vLLM's do; kvcompact reads only the
  // entries of slots a request holds.
  const kc::index_t block_elements = block_size * kv_heads * head_dim, layer_elements = 2 * num_blocks * block_elements;
  std::vector<float> kv_caches(static_cast<std::size_t>(layers * layer_elements));
  std::vector<kc::index_t> layer_offsets(layers);
  for (int l = 0; l < layers; ++l) layer_offsets[static_cast<std::size_t>(l)] = l * layer_elements;  // kv_caches[l].data_ptr() - base
  std::vector<std::int32_t> block_table(static_cast<std::size_t>(num_seqs * max_blocks_per_seq), 0);
  std::vector<int> owned(static_cast<std::size_t>(num_seqs), 0);
  std::vector<std::int32_t> free_blocks(num_blocks);
  for (int b = 0; b < num_blocks; ++b) free_blocks[static_cast<std::size_t>(b)] = num_blocks - 1 - b;
  const auto add_block = [&](int s) {
    block_table[static_cast<std::size_t>(s * max_blocks_per_seq + owned[static_cast<std::size_t>(s)]++)] = free_blocks.back();
    free_blocks.pop_back();
  };

  const kc::layouts::vllm_paged layout{block_table.data(), max_blocks_per_seq, num_seqs, layer_offsets.data(), layers,
                                       num_blocks,         block_size,         kv_heads, head_dim,              kc::layouts::page_format::nhd};
  const kc::index_t capacity = layout.capacity();
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(num_seqs * layers * kv_heads), 0);
  std::vector<std::int32_t> positions(static_cast<std::size_t>(num_seqs * layers * kv_heads * capacity), 0);
  const kc::kv_cache<float, kc::layouts::vllm_paged> cache{layout, kv_caches.data(), kv_caches.data() + layout.value_offset(), lengths.data(),
                                                           positions.data()};

  std::mt19937 model(7);  // the stand-in model
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto next = [&](std::vector<float>& v) {
    for (float& x : v) x = normal(model);
  };

  // 1. Prefill: K and V of every prompt token through the block table; the last `window` queries kept for compression.
  std::vector<float> k(kv_heads * head_dim), v(k.size()), q(query_heads * head_dim);
  std::vector<float> window_queries(static_cast<std::size_t>(num_seqs * layers * query_heads * window * head_dim));
  std::vector<std::int32_t> window_positions(static_cast<std::size_t>(num_seqs * window));
  for (int s = 0; s < num_seqs; ++s) {
    while (owned[static_cast<std::size_t>(s)] * block_size < prompts[static_cast<std::size_t>(s)]) add_block(s);
    for (int t = 0; t < prompts[static_cast<std::size_t>(s)]; ++t)
      for (int l = 0; l < layers; ++l) {
        next(k), next(v), next(q);
        const std::int32_t block = block_table[static_cast<std::size_t>(s * max_blocks_per_seq + t / block_size)];
        for (int h = 0; h < kv_heads; ++h) {  // vLLM: kv_caches[l][0 or 1][block][t % block_size][h][d]
          const std::size_t at = static_cast<std::size_t>(layer_offsets[static_cast<std::size_t>(l)] + block * block_elements +
                                                          ((t % block_size) * kv_heads + h) * head_dim);
          std::copy_n(&k[static_cast<std::size_t>(h * head_dim)], head_dim, &kv_caches[at]);
          std::copy_n(&v[static_cast<std::size_t>(h * head_dim)], head_dim, &kv_caches[at + static_cast<std::size_t>(layout.value_offset())]);
          const std::size_t head = static_cast<std::size_t>((s * layers + l) * kv_heads + h);
          positions[head * static_cast<std::size_t>(capacity) + static_cast<std::size_t>(t)] = t;
          lengths[head] = t + 1;
        }
        const int row = t - (prompts[static_cast<std::size_t>(s)] - window);
        if (row < 0) continue;
        window_positions[static_cast<std::size_t>(s * window + row)] = t;
        for (int g = 0; g < query_heads; ++g)  // query_window layout: [seq][layer][query head][row][dim]
          std::copy_n(&q[static_cast<std::size_t>(g * head_dim)], head_dim,
                      &window_queries[(((static_cast<std::size_t>(s) * layers + l) * query_heads + g) * window + row) * head_dim]);
      }
  }
  std::printf("prefill: prompts %d, %d, %d tokens in %d of %d blocks\n", prompts[0], prompts[1], prompts[2], num_blocks - static_cast<int>(free_blocks.size()),
              num_blocks);

  // 2. Compression: a session per cache, state and workspace owned by the engine.
  const auto policy = kc::policies::snapkv(budget, window);
  using session_type = kc::cpu::session<decltype(policy), float, kc::layouts::vllm_paged>;
  const kc::attention_shape shape{query_heads};
  std::vector<std::byte> state(session_type::state_bytes(layout)), workspace(session_type::workspace_bytes(layout, shape));
  session_type session(policy, cache, shape, state, workspace);
  session.compress_prefill({window_queries.data(), window_positions.data(), window});
  const auto longest = [&](int s) {
    std::int32_t n = 0;
    for (int i = 0; i < layers * kv_heads; ++i) n = std::max(n, lengths[static_cast<std::size_t>(s * layers * kv_heads + i)]);
    return n;
  };
  for (int s = 0; s < num_seqs; ++s)  // blocks past the longest head hold nothing any more
    while ((owned[static_cast<std::size_t>(s)] - 1) * block_size >= longest(s)) {
      std::int32_t& entry = block_table[static_cast<std::size_t>(s * max_blocks_per_seq + --owned[static_cast<std::size_t>(s)])];
      free_blocks.push_back(entry);
      entry = 0;
    }
  std::printf("compress_prefill (SnapKV, %d slots per head): %d, %d, %d slots per head, %d of %d blocks in use\n", budget, longest(0), longest(1),
              longest(2), num_blocks - static_cast<int>(free_blocks.size()), num_blocks);

  // 3. Decode: one token per request and step, all layers.
  std::vector<float> out(q.size());
  double checksum = 0.0;
  for (int step = 0; step < generate; ++step)
    for (int s = 0; s < num_seqs; ++s) {
      if (longest(s) == owned[static_cast<std::size_t>(s)] * block_size) add_block(s);  // SnapKV appends: room for one more slot
      const int position = prompts[static_cast<std::size_t>(s)] + step;
      for (int l = 0; l < layers; ++l) {
        next(k), next(v), next(q);
        session.append(s, l, k.data(), v.data(), position);
        session.attend(s, l, q.data(), position, out.data());
        for (float x : out) checksum += x;
      }
    }
  std::printf("decode: %d tokens per request: %d, %d, %d slots per head, %d of %d blocks in use (output checksum %.4f)\n", generate, longest(0),
              longest(1), longest(2), num_blocks - static_cast<int>(free_blocks.size()), num_blocks, checksum);
  return 0;
}
