// A double cache: not one of the supported storage elements.
// expected-error {{"T must be float, kvcompact::half_t or kvcompact::bfloat16_t"}}
#include <kvcompact/kvcompact.hpp>

int main() {
  kvcompact::kv_cache<double, kvcompact::layouts::strided> cache{};
  (void)cache;
}
