// Compile-only check: every component's math is instantiated in device code by nvcc, through the
// selection contract's drivers on a thread block, so a component that stops being __host__ __device__
// (or uses host-only library calls) fails CI.
#include <kvcompact/cuda.cuh>

namespace kc = kvcompact;

namespace {

// A minimal device-side selection context over flat arrays (one layer, heads x capacity).
struct device_context {
  int heads;
  int queries;
  kc::index_t capacity;
  kc::index_t dims;
  kc::index_t now;
  const kc::index_t* lengths;
  const std::int32_t* positions;
  const float* scores;
  float* keys;
  float* values;
  std::uint8_t* flags;
  std::int32_t* targets;
  std::int32_t* slot_order;
  float* floats;
  std::int32_t* indices;
  std::int32_t* store;

  __device__ int kv_heads() const { return heads; }
  __device__ int query_heads() const { return queries; }
  __device__ int layer() const { return 0; }
  __device__ int num_layers() const { return 4; }
  __device__ int sequence() const { return 0; }
  __device__ kc::index_t step() const { return now; }
  __device__ kc::index_t head_dim() const { return dims; }
  __device__ kc::index_t length(int h) const { return lengths[h]; }
  __device__ kc::index_t position(int h, kc::index_t j) const { return positions[h * capacity + j]; }
  __device__ float score(int h, kc::index_t j) const { return scores[h * capacity + j]; }
  __device__ float query_score(int g, kc::index_t j) const { return scores[(g % heads) * capacity + j]; }
  __device__ kc::index_t budget(int) const { return capacity / 2; }
  __device__ bool kept(int h, kc::index_t j) const { return flags[h * capacity + j] != 0; }
  __device__ void keep(int h, kc::index_t j, bool v) const { flags[h * capacity + j] = v; }
  __device__ kc::index_t target(int h, kc::index_t j) const { return targets[h * capacity + j]; }
  __device__ void set_target(int h, kc::index_t j, kc::index_t t) const { targets[h * capacity + j] = static_cast<std::int32_t>(t); }
  __device__ const std::int32_t* order(int h) const { return slot_order + h * capacity; }
  template <class Group>
  __device__ void prepare_order(const Group&, int) const {}
  __device__ float* float_scratch(int h) const { return floats + h * capacity; }
  __device__ std::int32_t* index_scratch(int h, int which) const { return indices + (2 * h + which) * capacity; }
  __device__ std::int32_t* shared_store() const { return store; }
  __device__ float key(int h, kc::index_t j, kc::index_t d) const { return keys[(h * capacity + j) * dims + d]; }
  __device__ float value(int h, kc::index_t j, kc::index_t d) const { return values[(h * capacity + j) * dims + d]; }
  __device__ void set_key(int h, kc::index_t j, kc::index_t d, float x) const { keys[(h * capacity + j) * dims + d] = x; }
  __device__ void set_value(int h, kc::index_t j, kc::index_t d, float x) const { values[(h * capacity + j) * dims + d] = x; }
};

struct device_key {
  const float* row;
  __device__ float operator()(kc::index_t d) const { return row[d]; }
};

// A block runs a policy's scorer, selector and merger code over the context.
template <class Policy>
__global__ void run_policy(Policy policy, device_context ctx, kc::detail::ranked_head* heads, float* out) {
  const auto& scorer = policy.scorer;
  typename Policy::scorer_type::state_type state = scorer.initial_state(1.0f, 3);
  state = scorer.state_from_prefill(0.5f, 3, 9);
  if constexpr (Policy::needs_attention) {
    float acc = kc::detail::reduction_identity(scorer.rows);
    acc = kc::detail::reduction_combine(scorer.rows, acc, scorer.row_term(0.25f, 8, 9));
    scorer.observe(state, kc::detail::reduction_finish(scorer.group, acc, 2), 10);
  } else {
    scorer.observe(state, scorer.slot_score(device_key{ctx.keys}, ctx.dims, 4), 10);
  }
  out[0] = scorer.decode_score(state, 3);
  const kc::cuda::detail::block_group<256> group;
  kc::detail::select_layer(group, policy.selector, ctx, heads);
  kc::detail::select_decode(group, policy.selector, ctx, 0);
  out[1] = static_cast<float>(policy.selector.budget(0, 4, ctx.capacity));
  kc::detail::merge_head(group, policy.merger, ctx, 0);
}

template <class Policy>
void instantiate(const Policy& policy) {
  run_policy<<<1, 256>>>(policy, device_context{}, nullptr, nullptr);
}

template <kc::storage_element T>
__global__ void convert(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = kc::to_float(kc::from_float<T>(in[i]));
}

// Layout offsets in device code.
template <class Layout>
__global__ void offsets(Layout layout, kc::index_t* out) {
  out[0] = layout.offset(0, 0, 0, 1) + layout.dim_stride() + layout.capacity();
}

}  // namespace

void instantiate_every_component() {
  namespace p = kc::policies;
  instantiate(p::streaming_llm(64));
  instantiate(p::h2o(64, 16));
  instantiate(p::tova(64));
  instantiate(p::snapkv(64));
  instantiate(p::pyramidkv(64));
  instantiate(p::adakv(64));
  instantiate(p::knorm(64));
  instantiate(p::corm(16, 16));
  instantiate(p::corm_budgeted(64, 16));
  instantiate(p::windowkv(64, 4));
  instantiate(p::kvmerger(0.5));
  instantiate(p::cam(64, 4));
  instantiate(kc::policy<kc::scorers::key_norm, kc::selectors::top_k<kc::budgets::fraction>, kc::mergers::average>{});
  const auto map = kc::layouts::layer_map::character_ai(8, 16, 2);
  instantiate(p::prefixkv(kc::budgets::layer_table{}));
  instantiate(p::xkv(kc::budgets::layer_table{}));
  instantiate(p::bounded_memory(64, 8));
  instantiate(p::elastic_cache(0.5));
  instantiate(p::mixattention(map, 64));
  convert<float><<<1, 1>>>(nullptr, nullptr, 0);
  convert<kc::half_t><<<1, 1>>>(nullptr, nullptr, 0);
  convert<kc::bfloat16_t><<<1, 1>>>(nullptr, nullptr, 0);
  offsets<<<1, 1>>>(kc::layouts::bhsd(1, 1, 1, 8, 8), nullptr);
  offsets<<<1, 1>>>(kc::layouts::paged{}, nullptr);
  offsets<<<1, 1>>>(kc::layouts::layer_condensed<kc::layouts::strided>{}, nullptr);
  offsets<<<1, 1>>>(kc::layouts::layer_condensed<kc::layouts::ragged_layers>{kc::layouts::ragged_layers{}, map}, nullptr);
}
