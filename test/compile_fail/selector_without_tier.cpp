// A selector written against the old sequential interface: selector_tag alone names no tier.
// expected-error {{"the selector must choose its tier: component_kind = kvcompact::ranked_selector_tag or kvcompact::cooperative_selector_tag"}}
#include <kvcompact/kvcompact.hpp>

struct sequential_selector {
  using component_kind = kvcompact::selector_tag;
  kvcompact::index_t budget(kvcompact::index_t, kvcompact::index_t, kvcompact::index_t length) const { return length; }
  template <class Ctx>
  void select(Ctx&) const {}
  template <class Ctx>
  void select_decode(Ctx&, int) const {}
};

int main() {
  kvcompact::policy<kvcompact::scorers::key_norm, sequential_selector> p{};
  (void)p;
}
