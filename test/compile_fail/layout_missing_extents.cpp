// A user layout with offset() and dim_stride() but without its extents: the first rung of the ladder.
// expected-error {{"the layout type lacks one of num_sequences\(\), num_layers\(\), num_kv_heads\(\), capacity\(\), head_dim\(\)"}}
#include <kvcompact/kvcompact.hpp>

struct offsets_only {
  kvcompact::index_t offset(kvcompact::index_t, kvcompact::index_t, kvcompact::index_t, kvcompact::index_t slot) const { return slot; }
  kvcompact::index_t dim_stride() const { return 1; }
};

int main() {
  kvcompact::kv_cache<float, offsets_only> cache{};
  (void)cache;
}
