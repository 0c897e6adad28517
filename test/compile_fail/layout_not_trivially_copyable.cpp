// A layout with a user-provided copy constructor cannot be passed to a kernel by value.
// expected-error {{"the layout type must be trivially copyable"}}
#include <kvcompact/kvcompact.hpp>

struct heavy_layout : kvcompact::layouts::strided {
  heavy_layout() = default;
  heavy_layout(const heavy_layout& other) : kvcompact::layouts::strided(other) {}
};

int main() {
  kvcompact::kv_cache<float, heavy_layout> cache{};
  (void)cache;
}
