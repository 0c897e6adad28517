// A session over something that is not a kvcompact::policy (here a bare scorer): one readable sentence.
// expected-error {{"Policy must be a kvcompact::policy<Scorer, Selector, Merger>"}}
#include <kvcompact/kvcompact.hpp>

int main() {
  using session_t = kvcompact::cpu::session<kvcompact::scorers::key_norm, float, kvcompact::layouts::strided>;
  return static_cast<int>(sizeof(session_t));
}
