// A type that is not a scorer, used as a policy's Scorer: one readable sentence.
// expected-error {{"the scorer type must declare  using component_kind = kvcompact::scorer_tag"}}
#include <kvcompact/kvcompact.hpp>

int main() {
  kvcompact::policy<int, kvcompact::selectors::top_k<kvcompact::budgets::fixed>> p{};
  (void)p;
}
