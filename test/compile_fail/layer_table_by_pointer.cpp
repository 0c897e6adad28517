// A per-layer table passed to top_k by pointer (to avoid copying its 1 KB): a pointer is not a budget
// schedule; the table is trivially copyable and meant to be held by value.
// expected-error {{"budget_schedule"}}
#include <kvcompact/kvcompact.hpp>

int main() {
  kvcompact::selectors::top_k<const kvcompact::budgets::layer_table*> selector{};
  (void)selector;
}
