// SPDX-License-Identifier: Apache-2.0
// CPU backend benchmark: one Llama-3.1-8B attention layer (32 query heads, 8 KV heads, head_dim 128,
// fp32 BHSD cache, batch 1) compressed to 25 % by SnapKV (window 32), StreamingLLM, KNorm and TOVA,
// and one decode step of attention with H2O's accumulated-attention update, at N = 4096 and 16384
// tokens, with 1 and 2 threads. The peer (torch / kvpress on CPU) is bench/peer_torch_cpu.py;
// bench/cpu_compare.sh runs both and writes the table of bench/results/cpu_bench_<date>.md.
//
// Method: after one warm-up round, every repetition runs every (case, N, threads) once, interleaved; before each run the
// cache is restored from a pristine copy and the last-level cache is flushed (a 512 MiB write), and
// only the session call is timed (wall clock, and the process's CPU time, which a shared machine
// inflates less). Medians over the repetitions. The bytes floor is measured in the
// same run: memcpy of 256 MiB, bandwidth = bytes read + written per second; the floor of a prefill
// compression is reading K once plus reading and writing the kept quarter of K and V (as in
// bench/peer_torch.py), that of a decode step reading K and V once.
//
//   cpu_bench [--tokens 4096,16384] [--threads 1,2] [--reps 7] [--cases SnapKV,decode] [--csv FILE]
//             [--perf-control CTL,ACK]
// (--cases: only the cases whose name contains one of the given words; --perf-control: the control and
// acknowledgement FIFOs of `perf record -D -1 --control fifo:CTL,ACK`, so that perf samples only the
// timed session calls, not the restore, flush and setup around them)
#include <kvcompact/kvcompact.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace kc = kvcompact;

namespace {

constexpr int query_heads = 32, kv_heads = 8, head_dim = 128, window_rows = 32;
using clock_type = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

std::vector<int> numbers(const std::string& list) {
  std::vector<int> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::stoi(item));
  return out;
}

// perf record's control FIFOs (--perf-control): events enabled only around the timed calls.
struct perf_control {
  std::FILE* control = nullptr;
  std::FILE* acknowledgement = nullptr;
  // Sends @p command ("enable" or "disable") and waits for perf's acknowledgement.
  void send(const char* command) const {
    if (!control) return;
    std::fprintf(control, "%s\n", command);
    std::fflush(control);
    char ack[16];
    if (!std::fgets(ack, sizeof ack, acknowledgement)) std::fprintf(stderr, "cpu_bench: perf did not acknowledge '%s'\n", command);
  }
};
perf_control perf;

// Writes a buffer larger than the last-level cache, so each timed run starts from memory.
void flush_caches() {
  static std::vector<char> junk(std::size_t{512} << 20);
  static char value = 0;
  std::memset(junk.data(), ++value, junk.size());
}

// One layer's cache at N tokens, its pristine copy and the queries.
struct layer_data {
  int tokens;
  std::vector<float> keys, values, pristine_keys, pristine_values, window, last_query;
  std::vector<std::int32_t> lengths, positions, window_positions, last_position;
  kc::layouts::strided layout;

  explicit layer_data(int n)
      : tokens(n), keys(static_cast<std::size_t>(kv_heads) * n * head_dim), values(keys.size()),
        window(static_cast<std::size_t>(query_heads) * window_rows * head_dim), last_query(static_cast<std::size_t>(query_heads) * head_dim),
        lengths(kv_heads, n), positions(static_cast<std::size_t>(kv_heads) * n), window_positions(window_rows), last_position{n - 1},
        layout(kc::layouts::bhsd(1, 1, kv_heads, n, head_dim)) {
    std::mt19937 rng(7);
    auto uniform = [&] { return static_cast<float>(static_cast<double>(rng()) / 2147483648.0 - 1.0); };
    for (auto& x : keys) x = uniform();
    for (auto& x : values) x = uniform();
    for (auto& x : window) x = uniform();
    for (int g = 0; g < query_heads; ++g)  // TOVA's one-row window: the window's last query
      std::copy_n(&window[(static_cast<std::size_t>(g) * window_rows + window_rows - 1) * head_dim], head_dim, &last_query[static_cast<std::size_t>(g) * head_dim]);
    for (int r = 0; r < window_rows; ++r) window_positions[r] = n - window_rows + r;
    pristine_keys = keys;
    pristine_values = values;
  }
  void restore() {
    std::copy(pristine_keys.begin(), pristine_keys.end(), keys.begin());
    std::copy(pristine_values.begin(), pristine_values.end(), values.begin());
    std::fill(lengths.begin(), lengths.end(), tokens);
    for (int h = 0; h < kv_heads; ++h)
      for (int j = 0; j < tokens; ++j) positions[static_cast<std::size_t>(h) * tokens + j] = j;
  }
  kc::kv_cache<float, kc::layouts::strided> view() { return {layout, keys.data(), values.data(), lengths.data(), positions.data()}; }
  double kv_bytes() const { return 2.0 * static_cast<double>(keys.size()) * sizeof(float); }
};

// A session over `data` with its own state and workspace.
template <class Policy>
struct bench_session {
  using session_type = kc::cpu::session<Policy, float, kc::layouts::strided>;
  std::vector<std::byte> state, workspace;
  session_type session;
  bench_session(const Policy& policy, layer_data& data, int threads)
      : state(session_type::state_bytes(data.layout)), workspace(session_type::workspace_bytes(data.layout, {query_heads})),
        session(policy, data.view(), {query_heads}, state, workspace) {
    session.set_threads(threads);
  }
};

struct bench_case {
  std::string name;
  int tokens, threads;
  double floor_bytes;
  std::function<std::pair<double, double>()> run;  // wall ms, process CPU ms
  std::vector<double> ms, cpu_ms;
};

// CPU time of the process (all threads) in ms: on a shared machine, what the work itself cost.
double cpu_ms() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) * 1e-6;
}

// A timed call of a fresh session over `data` (session construction, restore and flush untimed).
template <class Policy, class Call>
bench_case make_case(std::string name, layer_data& data, int threads, double floor_bytes, const Policy& policy, const Call& call) {
  return {std::move(name), data.tokens, threads, floor_bytes, [&data, threads, policy, call] {
            data.restore();
            bench_session<Policy> s(policy, data, threads);
            flush_caches();
            perf.send("enable");
            const double cpu0 = cpu_ms();
            const auto t0 = clock_type::now();
            call(s.session);
            const auto t1 = clock_type::now();
            const double cpu1 = cpu_ms();
            perf.send("disable");
            return std::pair{std::chrono::duration<double, std::milli>(t1 - t0).count(), cpu1 - cpu0};
          }, {}, {}};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> token_counts{4096, 16384}, thread_counts{1, 2};
  int reps = 7;
  std::string csv_path;
  std::vector<std::string> case_words;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--tokens") token_counts = numbers(v);
    else if (a == "--threads") thread_counts = numbers(v);
    else if (a == "--reps") reps = std::stoi(v);
    else if (a == "--csv") csv_path = v;
    else if (a == "--perf-control") {
      const auto comma = v.find(',');
      perf.control = std::fopen(v.substr(0, comma).c_str(), "w");
      perf.acknowledgement = comma == std::string::npos ? nullptr : std::fopen(v.substr(comma + 1).c_str(), "r");
      if (!perf.control || !perf.acknowledgement) {
        std::fprintf(stderr, "cpu_bench: --perf-control %s: cannot open the FIFOs CTL,ACK\n", v.c_str());
        return 2;
      }
    }
    else if (a == "--cases") {
      std::stringstream in(v);
      for (std::string word; std::getline(in, word, ',');) case_words.push_back(word);
    }
    else {
      std::fprintf(stderr, "cpu_bench: unknown option %s\n", a.c_str());
      return 2;
    }
  }

  std::vector<char> source(std::size_t{256} << 20, 1), target(source.size());
  std::vector<double> copy_ms;
  for (int r = 0; r < std::max(reps, 5); ++r) {
    flush_caches();
    const auto t0 = clock_type::now();
    std::memcpy(target.data(), source.data(), source.size());
    copy_ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
  }
  const double bandwidth = 2.0 * static_cast<double>(source.size()) / (median(copy_ms) * 1e-3);
  std::printf("cpu_bench: memcpy bandwidth (read + write) %.1f GB/s; hardware threads %d\n", bandwidth / 1e9, static_cast<int>(std::thread::hardware_concurrency()));

  std::vector<std::unique_ptr<layer_data>> layers;
  std::vector<bench_case> cases;
  for (int n : token_counts) {
    layers.push_back(std::make_unique<layer_data>(n));
    layer_data& data = *layers.back();
    const kc::index_t budget = n / 4;
    const double prefill_floor = data.kv_bytes() / 2 + 2 * 0.25 * data.kv_bytes(), decode_floor = data.kv_bytes();
    for (int threads : thread_counts) {
      cases.push_back(make_case("SnapKV prefill, window 32", data, threads, prefill_floor, kc::policies::snapkv(budget, window_rows),
                                   [&data](auto& s) { s.compress_prefill({data.window.data(), data.window_positions.data(), window_rows}); }));
      cases.push_back(make_case("StreamingLLM prefill", data, threads, prefill_floor, kc::policies::streaming_llm(budget), [](auto& s) { s.compress_prefill(); }));
      cases.push_back(make_case("KNorm prefill", data, threads, prefill_floor, kc::policies::knorm(budget), [](auto& s) { s.compress_prefill(); }));
      cases.push_back(make_case("TOVA prefill", data, threads, prefill_floor, kc::policies::tova(budget),
                                   [&data](auto& s) { s.compress_prefill({data.last_query.data(), data.last_position.data(), 1}); }));
      cases.push_back(make_case("decode attention + H2O update", data, threads, decode_floor, kc::policies::h2o(budget, 32), [&data](auto& s) {
        std::vector<float> out(static_cast<std::size_t>(query_heads) * head_dim);
        s.attend(0, 0, data.last_query.data(), data.tokens - 1, out.data());
      }));
    }
  }
  if (!case_words.empty())
    std::erase_if(cases, [&](const bench_case& c) {
      return std::none_of(case_words.begin(), case_words.end(), [&](const std::string& w) { return c.name.find(w) != std::string::npos; });
    });
  for (int r = 0; r <= reps; ++r)  // round 0 warms up and is dropped
    for (auto& c : cases) {
      const auto [ms, cpu] = c.run();
      if (r > 0) {
        c.ms.push_back(ms);
        c.cpu_ms.push_back(cpu);
      }
    }

  std::FILE* csv = csv_path.empty() ? nullptr : std::fopen(csv_path.c_str(), "w");
  if (csv) std::fprintf(csv, "implementation,case,tokens,threads,median_ms,floor_ms,x_floor,median_cpu_ms\n");
  std::printf("| case | N | threads | kvcompact median ms | bytes floor ms | x floor | median CPU ms |\n|---|---|---|---|---|---|---|\n");
  for (const auto& c : cases) {
    const double ms = median(c.ms), floor_ms = c.floor_bytes / bandwidth * 1e3, cpu = median(c.cpu_ms);
    std::printf("| %s | %d | %d | %.2f | %.2f | %.1fx | %.2f |\n", c.name.c_str(), c.tokens, c.threads, ms, floor_ms, ms / floor_ms, cpu);
    if (csv)
      std::fprintf(csv, "kvcompact,\"%s\",%d,%d,%.3f,%.3f,%.2f,%.3f\n", c.name.c_str(), c.tokens, c.threads, ms, floor_ms, ms / floor_ms, cpu);
  }
  if (csv) std::fclose(csv);
  return 0;
}
