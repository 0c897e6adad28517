// nvcc reports kvcompact's own sentence, not a bare "failed deduction", when cuda::session is given
// something that is not a policy.
// expected-error {{"cuda::session<Policy, T, Layout>: Policy must be a kvcompact::policy<Scorer, Selector, Merger>"}}
#include <kvcompact/cuda.cuh>

int main() {
  using session_t = kvcompact::cuda::session<int, kvcompact::bfloat16_t, kvcompact::layouts::strided>;
  return static_cast<int>(sizeof(session_t));
}
