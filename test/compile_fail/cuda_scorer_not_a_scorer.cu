// The same readable sentence under nvcc as under g++ for a component that is not a scorer.
// expected-error {{"the scorer type must declare  using component_kind = kvcompact::scorer_tag"}}
#include <kvcompact/cuda.cuh>

int main() {
  kvcompact::policy<int, kvcompact::selectors::top_k<kvcompact::budgets::fixed>> p{};
  (void)p;
}
