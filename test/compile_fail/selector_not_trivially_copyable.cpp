// A selector with a user-provided copy constructor cannot be passed to a kernel by value.
// expected-error {{"the selector type must be trivially copyable"}}
#include <kvcompact/kvcompact.hpp>

struct heavy_selector : kvcompact::selectors::top_k<kvcompact::budgets::fixed> {
  heavy_selector() = default;
  heavy_selector(const heavy_selector& other) : kvcompact::selectors::top_k<kvcompact::budgets::fixed>(other) {}
};

int main() {
  kvcompact::policy<kvcompact::scorers::key_norm, heavy_selector> p{};
  (void)p;
}
