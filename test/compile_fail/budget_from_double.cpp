// A floating-point budget does not silently become a slot count: shares go through budget_size::share().
// expected-error {{"budget_size"}}
#include <kvcompact/kvcompact.hpp>

int main() {
  const auto policy = kvcompact::policies::snapkv(0.25);
  return static_cast<int>(policy.selector.schedule.slots);
}
