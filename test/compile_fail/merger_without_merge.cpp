// A merger that opts in but has no merge(group, context, head).
// expected-error {{"the merger lacks  static constexpr bool merges  or merge\(group, context, head\)"}}
#include <kvcompact/kvcompact.hpp>

struct lazy_merger {
  using component_kind = kvcompact::merger_tag;
  static constexpr bool merges = true;
};

int main() {
  kvcompact::policy<kvcompact::scorers::key_norm, kvcompact::selectors::top_k<kvcompact::budgets::fixed>, lazy_merger> p{};
  (void)p;
}
