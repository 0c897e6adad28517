// A budget schedule with a validate() the sessions cannot call as validate(num_layers, where): it would
// never run, so the session names the expected signature.
// expected-error {{"a budget schedule's validate must be callable as validate\(num_layers, where\)"}}
#include <kvcompact/kvcompact.hpp>

#include <vector>

struct checked_schedule {
  kvcompact::index_t slots;
  kvcompact::index_t budget(kvcompact::index_t, kvcompact::index_t, kvcompact::index_t) const { return slots; }
  void validate() const {}
};

int main() {
  using policy_t = kvcompact::policy<kvcompact::scorers::recency, kvcompact::selectors::top_k<checked_schedule>>;
  const auto layout = kvcompact::layouts::bhsd(1, 1, 1, 8, 4);
  std::vector<float> k(32);
  std::vector<std::int32_t> lengths(1), positions(8);
  std::vector<std::byte> state(1024), workspace(4096);
  kvcompact::cpu::session<policy_t, float, kvcompact::layouts::strided> s(policy_t{{}, {checked_schedule{4}}, {}}, {layout, k.data(), k.data(), lengths.data(), positions.data()},
                                                                        kvcompact::attention_shape{1}, state, workspace);
}
