// window_need_of over something that is not a kvcompact::policy (here a bare scorer): one readable sentence.
// expected-error {{"window_need_of<P>: P must be a kvcompact::policy"}}
#include <kvcompact/kvcompact.hpp>

int main() { return static_cast<int>(kvcompact::window_need_v<kvcompact::scorers::key_norm>); }
