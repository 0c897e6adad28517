// SPDX-License-Identifier: Apache-2.0
// The execution groups of the selection contract against plain references: the CUDA backend's
// block_group (a thread block of 256 threads; on a GPU, and under the emulator as
// emulated_block_group_test) and the CPU backend's sequential_group run the same test bodies:
//  - exclusive_scan with a non-commutative operator (segmented sums): every index gets its exact
//    prefix once, value_of is called once per index, the total is returned; sizes around the tile
//    boundaries (one tile holds 256 x 8 elements);
//  - reduce (sum and max) returns the same result to every thread;
//  - kth_largest on distinct keys with zeros ("not an item") and on keys clustered in their high bits
//    (the radix select must go deep): exactly min(k, items) keys lie at or above the threshold, and
//    the threshold is the k-th largest key (above every key for k <= 0, 1 for k >= items);
//  - sort: ids by 32-bit keys with many duplicates, the result is std::stable_sort's.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>
#include <kvcompact/detail/sequential_group.hpp>

#include "support/device_cache.hpp"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

constexpr int threads = 256;
using block = kc::cuda::detail::block_group<threads>;

/// Element of a segmented sum: `start` opens a new segment.
struct segment {
  std::int64_t start;
  std::int64_t value;
  bool operator==(const segment&) const = default;
};
struct segmented_sum {
  KVCOMPACT_HOST_DEVICE segment operator()(segment a, segment b) const { return b.start ? b : segment{a.start, a.value + b.value}; }
};

/// Outputs of one scan run.
struct scan_out {
  segment* prefix;
  segment* own;
  int* calls;
  int* writes;
  segment* total;
};

template <class Group>
KVCOMPACT_HOST_DEVICE void scan_body(const Group& group, const segment* in, index_t n, scan_out out) {
  const segment total = group.exclusive_scan(
      n,
      [&](index_t i) {
        ++out.calls[i];
        return in[i];
      },
      segment{0, 0}, segmented_sum{}, [&](index_t i, segment prefix, segment own) {
        out.prefix[i] = prefix;
        out.own[i] = own;
        ++out.writes[i];
      });
  group.once([&] { *out.total = total; });
}

__global__ void scan_kernel(const segment* in, index_t n, scan_out out) { scan_body(block{}, in, n, out); }

template <class Group>
KVCOMPACT_HOST_DEVICE void reduce_body(const Group& group, const std::int64_t* in, index_t n, std::int64_t* sums, std::int64_t* maxima) {
  const std::int64_t sum = group.reduce(n, [&](index_t i) { return in[i]; }, std::int64_t{0}, [](std::int64_t a, std::int64_t b) { return a + b; });
  const std::int64_t most =
      group.reduce(n, [&](index_t i) { return in[i]; }, -(std::int64_t{1} << 62), [](std::int64_t a, std::int64_t b) { return a > b ? a : b; });
  sums[group.rank()] = sum;
  maxima[group.rank()] = most;
}

__global__ void reduce_kernel(const std::int64_t* in, index_t n, std::int64_t* sums, std::int64_t* maxima) {
  reduce_body(block{}, in, n, sums, maxima);
}

template <class Group>
KVCOMPACT_HOST_DEVICE void kth_body(const Group& group, const std::uint64_t* keys, index_t n, const index_t* ks, int count, std::uint64_t* cuts) {
  for (int q = 0; q < count; ++q) {
    const std::uint64_t cut = group.kth_largest(n, ks[q], [&](index_t i) { return keys[i]; });
    group.once([&] { cuts[q] = cut; });
  }
}

__global__ void kth_kernel(const std::uint64_t* keys, index_t n, const index_t* ks, int count, std::uint64_t* cuts) {
  kth_body(block{}, keys, n, ks, count, cuts);
}

template <class Group>
KVCOMPACT_HOST_DEVICE void sort_body(const Group& group, std::int32_t* items, index_t n, const std::uint32_t* keys, std::int32_t* temp) {
  group.for_each(n, [&](index_t i) { items[i] = static_cast<std::int32_t>(i); });
  group.sort(items, n, [&](std::int32_t id) { return keys[id]; }, temp);
}

__global__ void sort_kernel(std::int32_t* items, index_t n, const std::uint32_t* keys, std::int32_t* temp) {
  sort_body(block{}, items, n, keys, temp);
}

const std::vector<index_t> sizes{0, 1, 7, 255, 256, 257, 2047, 2048, 2049, 5000};

/// Runs a body with the sequential group on the host (`device == false`) or on one block.
struct backend {
  bool device;
  const char* name() const { return device ? "block_group" : "sequential_group"; }
};
const backend backends[] = {{false}, {true}};

/// Host vectors of a scan run.
struct scan_result {
  std::vector<segment> prefix, own;
  std::vector<int> calls, writes;
  segment total;
};

scan_result run_scan(backend b, const std::vector<segment>& in) {
  const auto n = static_cast<index_t>(in.size());
  const std::size_t m = std::max<std::size_t>(in.size(), 1);
  scan_result r{std::vector<segment>(m), std::vector<segment>(m), std::vector<int>(m, 0), std::vector<int>(m, 0), {}};
  if (!b.device) {
    std::vector<std::uint64_t> scratch(m);
    const kc::detail::sequential_group group(scratch.data(), static_cast<index_t>(m));
    scan_body(group, in.data(), n, {r.prefix.data(), r.own.data(), r.calls.data(), r.writes.data(), &r.total});
    return r;
  }
  kvtest::device_array<segment> d_in(in.empty() ? std::vector<segment>(1) : in);
  kvtest::device_array<segment> prefix(m), own(m), total(1);
  kvtest::device_array<int> calls(r.calls), writes(r.writes);
  kc::cuda::detail::launch(&scan_kernel, dim3(1), dim3(threads), 0, nullptr, d_in.data(), n,
                           scan_out{prefix.data(), own.data(), calls.data(), writes.data(), total.data()});
  KVCOMPACT_CUDA_CHECK(cudaDeviceSynchronize());
  r.prefix = prefix.download();
  r.own = own.download();
  r.calls = calls.download();
  r.writes = writes.download();
  r.total = total.download()[0];
  return r;
}

}  // namespace

BOOST_AUTO_TEST_CASE(exclusive_scan_gives_every_index_its_exact_prefix_once) {
  std::mt19937 rng(41);
  for (const backend b : backends)
    for (const index_t n : sizes) {
      BOOST_TEST_CONTEXT(b.name() << " n " << n) {
        std::vector<segment> in;
        for (index_t i = 0; i < n; ++i) in.push_back({rng() % 5 == 0 ? 1 : 0, static_cast<std::int64_t>(rng() % 1000) - 500});
        const scan_result r = run_scan(b, in);
        segment running{0, 0};
        index_t bad = 0;
        for (index_t i = 0; i < n; ++i) {
          const auto u = static_cast<std::size_t>(i);
          bad += !(r.prefix[u] == running) || !(r.own[u] == in[u]) || r.calls[u] != 1 || r.writes[u] != 1;
          running = segmented_sum{}(running, in[u]);
        }
        BOOST_TEST(bad == 0);
        BOOST_TEST((r.total == running));
      }
    }
}

BOOST_AUTO_TEST_CASE(reduce_returns_the_same_result_to_every_worker) {
  std::mt19937 rng(42);
  for (const backend b : backends)
    for (const index_t n : sizes) {
      BOOST_TEST_CONTEXT(b.name() << " n " << n) {
        std::vector<std::int64_t> in;
        for (index_t i = 0; i < n; ++i) in.push_back(static_cast<std::int64_t>(rng() % 100000) - 50000);
        const std::int64_t sum = std::accumulate(in.begin(), in.end(), std::int64_t{0});
        const std::int64_t most = in.empty() ? -(std::int64_t{1} << 62) : *std::max_element(in.begin(), in.end());
        std::vector<std::int64_t> sums(threads, 0), maxima(threads, 0);
        const int workers = b.device ? threads : 1;
        if (b.device) {
          kvtest::device_array<std::int64_t> d_in(in.empty() ? std::vector<std::int64_t>(1) : in), d_sums(sums), d_maxima(maxima);
          kc::cuda::detail::launch(&reduce_kernel, dim3(1), dim3(threads), 0, nullptr, d_in.data(), n, d_sums.data(), d_maxima.data());
          KVCOMPACT_CUDA_CHECK(cudaDeviceSynchronize());
          sums = d_sums.download();
          maxima = d_maxima.download();
        } else {
          std::vector<std::uint64_t> scratch(1);
          reduce_body(kc::detail::sequential_group(scratch.data(), 1), in.data(), n, sums.data(), maxima.data());
        }
        for (int t = 0; t < workers; ++t) {
          BOOST_TEST(sums[static_cast<std::size_t>(t)] == sum);
          BOOST_TEST(maxima[static_cast<std::size_t>(t)] == most);
        }
      }
    }
}

BOOST_AUTO_TEST_CASE(kth_largest_cuts_exactly_k_items) {
  std::mt19937_64 rng(43);
  for (const backend b : backends)
    for (const bool clustered : {false, true})
      for (const index_t n : sizes) {
        BOOST_TEST_CONTEXT(b.name() << (clustered ? " clustered" : " spread") << " n " << n) {
          // Distinct keys (a counter in the low bits), about a quarter zero.
          std::vector<std::uint64_t> keys;
          const std::uint64_t high = rng() | (std::uint64_t{1} << 63);
          for (index_t i = 0; i < n; ++i) {
            const std::uint64_t tag = static_cast<std::uint64_t>(i) + 1;
            const std::uint64_t key = clustered ? (high & ~std::uint64_t{0xffffff}) | ((rng() % 64) << 16) | (tag & 0xffff) : (rng() << 16) | (tag & 0xffff);
            keys.push_back(rng() % 4 == 0 ? 0 : key);
          }
          std::vector<std::uint64_t> items;
          for (std::uint64_t k : keys)
            if (k != 0) items.push_back(k);
          std::sort(items.begin(), items.end(), std::greater<>{});
          BOOST_TEST_REQUIRE((std::adjacent_find(items.begin(), items.end()) == items.end()));  // distinct
          const auto m = static_cast<index_t>(items.size());
          const std::vector<index_t> ks{-1, 0, 1, 2, m / 2, m - 1, m, m + 5};
          std::vector<std::uint64_t> cuts(ks.size());
          if (b.device) {
            kvtest::device_array<std::uint64_t> d_keys(keys.empty() ? std::vector<std::uint64_t>(1) : keys), d_cuts(cuts);
            kvtest::device_array<index_t> d_ks(ks);
            kc::cuda::detail::launch(&kth_kernel, dim3(1), dim3(threads), 0, nullptr, d_keys.data(), n, d_ks.data(), static_cast<int>(ks.size()),
                                     d_cuts.data());
            KVCOMPACT_CUDA_CHECK(cudaDeviceSynchronize());
            cuts = d_cuts.download();
          } else {
            std::vector<std::uint64_t> scratch(std::max<std::size_t>(keys.size(), 1));
            kth_body(kc::detail::sequential_group(scratch.data(), static_cast<index_t>(scratch.size())), keys.data(), n, ks.data(),
                     static_cast<int>(ks.size()), cuts.data());
          }
          for (std::size_t q = 0; q < ks.size(); ++q) {
            const index_t k = ks[q];
            const std::uint64_t expected = k <= 0 ? ~std::uint64_t{0} : k >= m ? 1 : items[static_cast<std::size_t>(k - 1)];
            BOOST_TEST(cuts[q] == expected, "k " << k);
            const auto at_or_above = std::count_if(keys.begin(), keys.end(), [&](std::uint64_t key) { return key != 0 && key >= cuts[q]; });
            BOOST_TEST(at_or_above == std::clamp<index_t>(k, 0, m), "k " << k);
          }
        }
      }
}

BOOST_AUTO_TEST_CASE(sort_is_stable_by_key) {
  std::mt19937 rng(44);
  for (const backend b : backends)
    for (const bool narrow : {false, true})
      for (const index_t n : sizes) {
        BOOST_TEST_CONTEXT(b.name() << (narrow ? " narrow keys" : " wide keys") << " n " << n) {
          std::vector<std::uint32_t> keys;  // many duplicates; narrow keys share their high bytes (skipped passes)
          for (index_t i = 0; i < n; ++i) keys.push_back(narrow ? 0x80000000u | (rng() % 300) : (rng() % 50) * 0x01010101u + (rng() % 3));
          std::vector<std::int32_t> expected(static_cast<std::size_t>(n));
          std::iota(expected.begin(), expected.end(), 0);
          std::stable_sort(expected.begin(), expected.end(), [&](std::int32_t a, std::int32_t c) { return keys[a] < keys[c]; });
          std::vector<std::int32_t> items(std::max<std::size_t>(expected.size(), 1), -1), temp(items.size(), -1);
          if (b.device) {
            kvtest::device_array<std::uint32_t> d_keys(keys.empty() ? std::vector<std::uint32_t>(1) : keys);
            kvtest::device_array<std::int32_t> d_items(items), d_temp(temp);
            kc::cuda::detail::launch(&sort_kernel, dim3(1), dim3(threads), 0, nullptr, d_items.data(), n, d_keys.data(), d_temp.data());
            KVCOMPACT_CUDA_CHECK(cudaDeviceSynchronize());
            items = d_items.download();
          } else {
            std::vector<std::uint64_t> scratch(1);
            sort_body(kc::detail::sequential_group(scratch.data(), 1), items.data(), n, keys.data(), temp.data());
          }
          items.resize(expected.size());
          BOOST_TEST(items == expected, boost::test_tools::per_element());
        }
      }
}

#include "support/gpu_main.hpp"
