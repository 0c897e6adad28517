// A token selector passed where the channel selector of cpu::prune_key_channels belongs.
// expected-error {{"the channel selector type must declare  using component_kind = kvcompact::channel_selector_tag"}}
#include <kvcompact/kvcompact.hpp>

int main() {
  using selector = kvcompact::selectors::top_k<kvcompact::budgets::fixed>;
  kvcompact::kv_cache<float, kvcompact::layouts::strided> cache{};
  kvcompact::pruned_keys<float> pruned{};
  kvcompact::cpu::prune_key_channels(selector{}, cache, kvcompact::attention_shape{1}, kvcompact::query_window{}, pruned);
}
