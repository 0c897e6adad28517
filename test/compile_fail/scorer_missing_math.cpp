// An attention scorer that declares its source and state but not row_term / rows / group.
// expected-error {{"the scorer lacks its scoring math"}}
#include <kvcompact/kvcompact.hpp>

struct half_written_scorer {
  using component_kind = kvcompact::scorer_tag;
  using state_type = float;
  static constexpr kvcompact::score_source source = kvcompact::score_source::attention;
  state_type initial_state(float, kvcompact::index_t) const { return 0.0f; }
  state_type state_from_prefill(float score, kvcompact::index_t, kvcompact::index_t) const { return score; }
  void observe(state_type& state, float term, kvcompact::index_t) const { state += term; }
  float decode_score(const state_type& state, kvcompact::index_t) const { return state; }
};

int main() {
  kvcompact::policy<half_written_scorer, kvcompact::selectors::top_k<kvcompact::budgets::fixed>> p{};
  (void)p;
}
