// embedding: rows of a table gathered by integer ids, against a plain loop.
#include <gtest/gtest.h>

#include "ops/op_testing.h"
#include "taiyi/ops/ops.h"

namespace taiyi {
using namespace ops;
namespace {

TEST(Embedding, GathersRowsForI64AndI32Ids) {
  const Tensor table = ops_test::random_tensor({13, 5}, 3);
  const std::vector<int64_t> ids = {0, 12, 7, 7, 3, 1};
  for (DType dt : {DType::I64, DType::I32}) {
    const Tensor id_t = Tensor::from_vector(ids, {2, 3}).to(dt);
    const Tensor y = embedding(table, id_t);
    ASSERT_EQ(y.shape(), (Shape{2, 3, 5}));
    std::vector<double> expected;
    for (int64_t id : ids)
      for (int64_t c = 0; c < 5; ++c) expected.push_back(table.item(id * 5 + c));
    EXPECT_TRUE(ops_test::all_close(y, expected, 0, 0));
  }
}

TEST(Embedding, NonContiguousTableAndOutOfRangeIds) {
  const Tensor table = ops_test::random_tensor({5, 9}, 4).transpose(0, 1);  // [9, 5] strided
  const Tensor y = embedding(table, Tensor::from_vector<int64_t>({8}, {1}));
  for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(y.item(c), table.item(8 * 5 + c));
  EXPECT_TRUE(ops_test::throws_error([&] { embedding(table, Tensor::from_vector<int64_t>({9}, {1})); }, {"embedding", "id 9"}));
  EXPECT_TRUE(ops_test::throws_error([&] { embedding(table, Tensor::from_vector<int64_t>({-1}, {1})); }, {"id -1"}));
  EXPECT_TRUE(ops_test::throws_error([&] { embedding(table, Tensor::zeros({2})); }, {"ids must be i64 or i32"}));
}

}  // namespace
}  // namespace taiyi
