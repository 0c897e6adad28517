// A ranked selector that does not say whether it decides per head or per layer.
// expected-error {{"the selector lacks  static constexpr kvcompact::selection_scope scope"}}
#include <kvcompact/kvcompact.hpp>

struct unscoped {
  using component_kind = kvcompact::ranked_selector_tag;
  kvcompact::index_t budget(kvcompact::index_t, kvcompact::index_t, kvcompact::index_t length) const { return length; }
};

int main() {
  kvcompact::policy<kvcompact::scorers::key_norm, unscoped> p{};
  (void)p;
}
