// A layout whose layer_capacity() takes no layer: the backends could not ask a layer's capacity, so the
// ladder names the signature instead of silently using capacity() for every layer.
// expected-error {{"layer_capacity must be callable as layer_capacity\(storage_layer\)"}}
#include <kvcompact/kvcompact.hpp>

struct wrong_layer_capacity {
  kvcompact::index_t num_sequences() const { return 1; }
  kvcompact::index_t num_layers() const { return 2; }
  kvcompact::index_t num_kv_heads() const { return 1; }
  kvcompact::index_t capacity() const { return 8; }
  kvcompact::index_t head_dim() const { return 4; }
  kvcompact::index_t dim_stride() const { return 1; }
  kvcompact::index_t offset(kvcompact::index_t, kvcompact::index_t layer, kvcompact::index_t, kvcompact::index_t slot) const { return (layer * 8 + slot) * 4; }
  kvcompact::index_t layer_capacity() const { return 4; }
};

int main() {
  kvcompact::kv_cache<float, wrong_layer_capacity> cache{};
  (void)cache;
}
