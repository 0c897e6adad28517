// A scorer that declares prefill_window as something other than a kvcompact::window_need.
// expected-error {{"prefill_window must be a  static constexpr kvcompact::window_need"}}
#include <kvcompact/kvcompact.hpp>

struct rows_scorer : kvcompact::scorers::observation_window {
  static constexpr int prefill_window = 2;
};

int main() {
  using policy_type = kvcompact::policy<rows_scorer, kvcompact::selectors::top_k<kvcompact::budgets::fixed>>;
  return static_cast<int>(kvcompact::window_need_v<policy_type>);
}
