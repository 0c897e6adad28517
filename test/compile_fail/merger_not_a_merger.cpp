// A selector passed where the merger belongs.
// expected-error {{"the merger type must declare  using component_kind = kvcompact::merger_tag"}}
#include <kvcompact/kvcompact.hpp>

int main() {
  using selector = kvcompact::selectors::top_k<kvcompact::budgets::fixed>;
  kvcompact::policy<kvcompact::scorers::key_norm, selector, selector> p{};
  (void)p;
}
