// A merger passed where the selector belongs.
// expected-error {{"the selector type must declare  using component_kind = kvcompact::ranked_selector_tag"}}
#include <kvcompact/kvcompact.hpp>

int main() {
  kvcompact::policy<kvcompact::scorers::key_norm, kvcompact::mergers::drop> p{};
  (void)p;
}
