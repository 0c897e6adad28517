// A channel selector that declares its kind but has no channel_score.
// expected-error {{"the channel selector lacks kept_channels\(head_dim\), channel_score"}}
#include <kvcompact/kvcompact.hpp>

struct half_a_selector {
  using component_kind = kvcompact::channel_selector_tag;
  kvcompact::index_t kept_channels(kvcompact::index_t head_dim) const { return head_dim / 2; }
  kvcompact::index_t unpruned_tail() const { return 0; }
  void validate(const char*) const {}
};

int main() {
  kvcompact::kv_cache<float, kvcompact::layouts::strided> cache{};
  kvcompact::pruned_keys<float> pruned{};
  kvcompact::cpu::prune_key_channels(half_a_selector{}, cache, kvcompact::attention_shape{1}, kvcompact::query_window{}, pruned);
}
