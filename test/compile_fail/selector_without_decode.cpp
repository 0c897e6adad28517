// A selector with prefill selection but no decode-time rule.
// expected-error {{"the selector lacks select\(context\), select_decode\(context, head\) or budget"}}
#include <kvcompact/kvcompact.hpp>

struct prefill_only {
  using component_kind = kvcompact::selector_tag;
  template <class Ctx>
  void select(Ctx&) const {}
  kvcompact::index_t budget(kvcompact::index_t, kvcompact::index_t, kvcompact::index_t length) const { return length; }
};

int main() {
  kvcompact::policy<kvcompact::scorers::key_norm, prefill_only> p{};
  (void)p;
}
