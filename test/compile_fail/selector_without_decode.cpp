// A ranked selector with its prefill rule but no decode-time rule.
// expected-error {{"the ranked selector lacks decode_verdict\(context, head, slot\) or decode_evictions\(context, head\)"}}
#include <kvcompact/kvcompact.hpp>

struct prefill_only {
  using component_kind = kvcompact::ranked_selector_tag;
  static constexpr kvcompact::selection_scope scope = kvcompact::selection_scope::head;
  kvcompact::index_t budget(kvcompact::index_t, kvcompact::index_t, kvcompact::index_t length) const { return length; }
  template <class Ctx>
  kvcompact::slot_verdict verdict(const Ctx&, int, kvcompact::index_t) const {
    return kvcompact::slot_verdict::candidate;
  }
  template <class Candidates>
  float rank_key(const Candidates& candidates, kvcompact::index_t i) const {
    return candidates.score(i);
  }
  template <class Ctx>
  kvcompact::index_t keep_count(const Ctx&, int, kvcompact::index_t) const {
    return 8;
  }
};

int main() {
  kvcompact::policy<kvcompact::scorers::key_norm, prefill_only> p{};
  (void)p;
}
