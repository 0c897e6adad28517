// A cooperative selector whose select() takes no execution group (the old sequential signature).
// expected-error {{"the cooperative selector lacks select\(group, context, head\) \(head scope\) or select\(group, context\) \(layer scope\)"}}
#include <kvcompact/kvcompact.hpp>

struct groupless {
  using component_kind = kvcompact::cooperative_selector_tag;
  static constexpr kvcompact::selection_scope scope = kvcompact::selection_scope::head;
  kvcompact::index_t budget(kvcompact::index_t, kvcompact::index_t, kvcompact::index_t length) const { return length; }
  template <class Ctx>
  void select(Ctx&, int) const {}
  template <class Group, class Ctx>
  void select_decode(Group&, Ctx&, int) const {}
};

int main() {
  kvcompact::policy<kvcompact::scorers::key_norm, groupless> p{};
  (void)p;
}
