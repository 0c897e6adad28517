// A ranked selector of layer scope that never says how the layer's ranking becomes per-head allocations.
// expected-error {{"a ranked selector of layer scope needs allocate\(context, layer, head\)"}}
#include <kvcompact/kvcompact.hpp>

struct layer_ranked {
  using component_kind = kvcompact::ranked_selector_tag;
  static constexpr kvcompact::selection_scope scope = kvcompact::selection_scope::layer;
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
  template <class Ctx>
  kvcompact::slot_verdict decode_verdict(const Ctx&, int, kvcompact::index_t) const {
    return kvcompact::slot_verdict::keep;
  }
  template <class Ctx>
  kvcompact::index_t decode_evictions(const Ctx&, int) const {
    return 0;
  }
};

int main() {
  kvcompact::policy<kvcompact::scorers::key_norm, layer_ranked> p{};
  (void)p;
}
