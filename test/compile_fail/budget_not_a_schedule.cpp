// A selector whose budget schedule has no budget(layer, num_layers, length): the diagnostic names the
// kvcompact::budget_schedule concept.
// expected-error {{"budget_schedule"}}
#include <kvcompact/kvcompact.hpp>

struct not_a_schedule {
  kvcompact::index_t slots;
};

int main() {
  kvcompact::selectors::top_k<not_a_schedule> selector{};
  (void)selector;
}
