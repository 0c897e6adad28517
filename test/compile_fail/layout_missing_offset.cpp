// A user layout that has its extents but no offset(sequence, layer, kv_head, slot).
// expected-error {{"the layout type lacks offset\(sequence, layer, kv_head, slot\) or dim_stride\(\)"}}
#include <kvcompact/kvcompact.hpp>

struct extents_only {
  kvcompact::index_t num_sequences() const { return 1; }
  kvcompact::index_t num_layers() const { return 1; }
  kvcompact::index_t num_kv_heads() const { return 1; }
  kvcompact::index_t capacity() const { return 16; }
  kvcompact::index_t head_dim() const { return 8; }
};

int main() {
  kvcompact::kv_cache<float, extents_only> cache{};
  (void)cache;
}
