// A scorer that opts in and has its math but declares no per-slot decode state.
// expected-error {{"the scorer must declare a trivially copyable state_type"}}
#include <kvcompact/kvcompact.hpp>

struct stateless_scorer {
  using component_kind = kvcompact::scorer_tag;
  static constexpr kvcompact::score_source source = kvcompact::score_source::slot;
  template <class Key>
  float slot_score(const Key&, kvcompact::index_t, kvcompact::index_t position) const {
    return static_cast<float>(position);
  }
};

int main() {
  kvcompact::policy<stateless_scorer, kvcompact::selectors::top_k<kvcompact::budgets::fixed>> p{};
  (void)p;
}
