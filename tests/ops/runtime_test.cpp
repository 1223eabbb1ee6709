// The runtime controls: thread count (one OpenMP pool shared with oneDNN) and the FLOP counter.
#include <gtest/gtest.h>
#include <omp.h>

#include "op_testing.h"
#include "taiyi/ops/ops.h"

namespace taiyi::ops_test {
namespace {

TEST(Runtime, SetNumThreads) {
  const int before = ops::num_threads();
  ops::set_num_threads(1);
  EXPECT_EQ(ops::num_threads(), 1);
  // Results do not depend on the thread count.
  const Tensor x = random_tensor({2, 8, 16, 16}, 1), w = random_tensor({8, 8, 3, 3}, 2);
  const Tensor y1 = ops::conv2d(x, w, Tensor(), ops::Conv2dParams::same(1));
  const Tensor g1 = ops::group_norm(x, 4, Tensor(), Tensor(), 1e-5f);
  ops::set_num_threads(0);
  EXPECT_EQ(ops::num_threads(), omp_get_num_procs());
  EXPECT_TRUE(all_close(ops::conv2d(x, w, Tensor(), ops::Conv2dParams::same(1)), values(y1), 1e-6, 1e-6));
  EXPECT_TRUE(all_close(ops::group_norm(x, 4, Tensor(), Tensor(), 1e-5f), values(g1), 0.0, 0.0));
  ops::set_num_threads(before);
}

TEST(Runtime, FlopCounterAccumulatesAndResets) {
  ops::reset_flop_count();
  EXPECT_EQ(ops::flop_count(), 0u);
  ops::matmul(random_tensor({4, 6}, 1), random_tensor({6, 5}, 2));
  ops::matmul(random_tensor({4, 6}, 1), random_tensor({6, 5}, 2));
  EXPECT_EQ(ops::flop_count(), uint64_t{2} * 2 * 4 * 6 * 5);
  ops::add(random_tensor({4}, 1), random_tensor({4}, 2));  // not a matrix product: not counted
  EXPECT_EQ(ops::flop_count(), uint64_t{2} * 2 * 4 * 6 * 5);
  ops::reset_flop_count();
  EXPECT_EQ(ops::flop_count(), 0u);
}

}  // namespace
}  // namespace taiyi::ops_test
