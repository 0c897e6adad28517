// compress_prefill_layer() with WindowKV, whose selector shares one decision across a group of layers.
// expected-error {{"compress_prefill_layer: this selector shares one decision across layers"}}
#include <kvcompact/kvcompact.hpp>

int main() {
  using policy_type = decltype(kvcompact::policies::windowkv(64, 2));
  using session_type = kvcompact::cpu::session<policy_type, float, kvcompact::layouts::strided>;
  session_type* s = nullptr;
  s->compress_prefill_layer(0);
  return 0;
}
