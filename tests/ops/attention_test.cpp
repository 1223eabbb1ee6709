// attention against a naive per-head softmax(scale q k^T) v in double: odd and tiny shapes,
// Lq != Lk, D != Dv, 1 and 8 heads, lengths and head dims that cross every tile, block and tail
// boundary of the fused kernel (attention_f32_flash.h: tiles of 4 keys or value channels by 24
// queries on AVX2 and 48 on AVX-512, blocks of 96 queries and 64 keys), scores whose max grows or
// shrinks sharply from one key block to the next (the online softmax's rescaling), strided views
// (slices of a fused qkv), cross-attention shapes, every ISA path (AVX-512, AVX2, portable), and a
// check that memory does not grow with Lq x Lk.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "op_testing.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/ops.h"

namespace taiyi::ops_test {
namespace {

// Rows [row_begin, row_end) of every (batch, head) of the result; all rows by default.
std::vector<double> attention_reference(const Tensor& q, const Tensor& k, const Tensor& v, int heads, double scale,
                                        int64_t row_begin = 0, int64_t row_end = -1) {
  const int64_t b = q.size(0), lq = q.size(1), lk = k.size(1);
  const int64_t d = q.size(2) / heads, dv = v.size(2) / heads;
  if (row_end < 0) row_end = lq;
  const std::vector<double> qv = values(q), kv = values(k), vv = values(v);
  std::vector<double> out(static_cast<size_t>(b * (row_end - row_begin) * heads * dv));
  std::vector<double> s(static_cast<size_t>(lk));
  for (int64_t n = 0; n < b; ++n)
    for (int64_t i = row_begin; i < row_end; ++i)
      for (int h = 0; h < heads; ++h) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < lk; ++j) {
          double dot = 0.0;
          for (int64_t c = 0; c < d; ++c)
            dot += qv[(n * lq + i) * heads * d + h * d + c] * kv[(n * lk + j) * heads * d + h * d + c];
          s[j] = scale * dot;
          mx = std::max(mx, s[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < lk; ++j) sum += (s[j] = std::exp(s[j] - mx));
        for (int64_t c = 0; c < dv; ++c) {
          double acc = 0.0;
          for (int64_t j = 0; j < lk; ++j) acc += s[j] * vv[(n * lk + j) * heads * dv + h * dv + c];
          out[((n * (row_end - row_begin) + (i - row_begin)) * heads + h) * dv + c] = acc / sum;
        }
      }
  return out;
}

struct AttnCase {
  int64_t b, lq, lk;
  int heads;
  int64_t d, dv;
};

using ops::cpu::KernelLevel;
// Every kernel path: the best the CPU has (AVX-512 where it has it), AVX2 at most, portable.
constexpr KernelLevel kLevels[] = {KernelLevel::kAll, KernelLevel::kAvx2, KernelLevel::kPortable};
std::string level_name(KernelLevel level) {
  return level == KernelLevel::kAll ? "default" : level == KernelLevel::kAvx2 ? "AVX2" : "portable";
}

// Runs the body with the kernels capped at `level`, restoring the default even on failure.
class KernelPath {
 public:
  explicit KernelPath(KernelLevel level) { ops::cpu::set_kernel_level(level); }
  ~KernelPath() { ops::cpu::set_kernel_level(KernelLevel::kAll); }
  KernelPath(const KernelPath&) = delete;
  KernelPath& operator=(const KernelPath&) = delete;
};

void check_case(const AttnCase& c, uint32_t seed) {
  SCOPED_TRACE("B=" + std::to_string(c.b) + " Lq=" + std::to_string(c.lq) + " Lk=" + std::to_string(c.lk) +
               " H=" + std::to_string(c.heads) + " D=" + std::to_string(c.d) + " Dv=" + std::to_string(c.dv));
  // Spread of 2 per element gives scores of a few units: softmax far from uniform.
  const Tensor q = random_tensor({c.b, c.lq, c.heads * c.d}, seed, -2.0f, 2.0f);
  const Tensor k = random_tensor({c.b, c.lk, c.heads * c.d}, seed + 1, -2.0f, 2.0f);
  const Tensor v = random_tensor({c.b, c.lk, c.heads * c.dv}, seed + 2);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  const Tensor out = ops::attention(q, k, v, c.heads, scale);
  EXPECT_EQ(out.shape(), (Shape{c.b, c.lq, c.heads * c.dv}));
  EXPECT_TRUE(out.is_contiguous());
  EXPECT_TRUE(all_close(out, attention_reference(q, k, v, c.heads, scale), 1e-5, 1e-5));
}

TEST(Attention, MatchesNaiveSoftmax) {
  const AttnCase cases[] = {
      {1, 1, 3, 1, 5, 5},          // one query
      {2, 5, 7, 1, 3, 4},          // Lq != Lk, D != Dv
      {1, 3, 1, 2, 4, 2},          // one key: output is v
      {2, 33, 77, 8, 8, 8},        // cross-attention shape, 8 heads
      {1, 300, 20, 3, 4, 6},       // queries not a multiple of the block
      {2, 17, 129, 8, 5, 3},       // odd everything
      {1, 1024, 1024, 2, 16, 16},  // crosses query-block boundaries
      {1, 64, 64, 1, 512, 512},    // VAE mid-block: one head, wide channels
  };
  uint32_t seed = 1;
  for (const AttnCase& c : cases) check_case(c, seed += 3);
}

TEST(Attention, PortableKernelPathMatches) {
  KernelPath generic(KernelLevel::kPortable);
  check_case({2, 37, 45, 4, 8, 8}, 100);
}

// Every Lq and Lk of the lists against each other, each D and Dv (never equal) eight or nine times.
// Lengths 1, 5, 17, 49, 63, 64, 65 and 257 cross the query vectors (8 or 16), tiles (24 or 48) and
// blocks (96), the
// key tiles (4) and blocks (64, the last up to 96 long); 97 and 161 keys end in a merged and a
// separate last key block. Up to 65 queries the kernel reads K and V in place, at 300 it packs them.
// D = 1 and 3 are shorter than a vector, 41 leaves a tail after the 8 x 8 transposes, and Dv = 1, 3
// and 41 leave partly padded groups of 4 value channels.
void check_odd_shapes() {
  const int64_t query_lengths[] = {1, 5, 17, 49, 63, 64, 65, 257, 300};
  const int64_t key_lengths[] = {1, 5, 17, 63, 64, 65, 257, 97, 161};
  const int64_t dims[] = {1, 3, 8, 40, 41, 80, 160};
  uint32_t seed = 1000;
  for (size_t i = 0; i < std::size(query_lengths); ++i)
    for (size_t j = 0; j < std::size(key_lengths); ++j) {
      const int64_t d = dims[(i + j) % 7];
      int64_t dv = dims[(i + 2 * j + 3) % 7];
      if (dv == d) dv = dims[(i + 2 * j + 4) % 7];
      const int64_t b = (i + j) % 3 == 0 ? 2 : 1;
      check_case({b, query_lengths[i], key_lengths[j], 2, d, dv}, seed += 3);
    }
}

TEST(Attention, OddShapesCrossEveryTileBoundary) { check_odd_shapes(); }

TEST(Attention, OddShapesCrossEveryTileBoundaryAvx2) {
  KernelPath avx2(KernelLevel::kAvx2);
  check_odd_shapes();
}

TEST(Attention, OddShapesCrossEveryTileBoundaryPortable) {
  KernelPath generic(KernelLevel::kPortable);
  check_odd_shapes();
}

// q k^T ramps along the keys: later key blocks raise (or lower) each query's max by far more than
// the kernel lets a block outgrow the max it exponentiates against (2^32), so blocks are redone and
// the output rescaled, over and over; the softmax ends up nearly one-hot.
TEST(Attention, ScoresThatGrowOrShrinkAcrossKeyBlocks) {
  const int64_t b = 1, lq = 50, lk = 300, d = 4, dv = 6;
  for (const float direction : {1.0f, -1.0f}) {
    SCOPED_TRACE(direction > 0 ? "growing" : "shrinking");
    std::vector<float> qd(static_cast<size_t>(lq * d)), kd(static_cast<size_t>(lk * d));
    const Tensor noise_q = random_tensor({lq, d}, 5, 0.5f, 1.5f), noise_k = random_tensor({lk, d}, 6, -0.2f, 0.2f);
    for (int64_t i = 0; i < lq * d; ++i) qd[i] = static_cast<float>(noise_q.item(i));
    for (int64_t j = 0; j < lk; ++j)
      for (int64_t c = 0; c < d; ++c)
        kd[j * d + c] = direction * (static_cast<float>(j) / 8.0f) + static_cast<float>(noise_k.item(j * d + c));
    const Tensor q = Tensor::from_vector(qd, {b, lq, d}), k = Tensor::from_vector(kd, {b, lk, d});
    const Tensor v = random_tensor({b, lk, dv}, 7);
    for (const KernelLevel level : kLevels) {
      KernelPath path(level);
      EXPECT_TRUE(all_close(ops::attention(q, k, v, 1, 1.0f), attention_reference(q, k, v, 1, 1.0)))
          << level_name(level) << " path";
    }
  }
}

// Self-attention on slices of one fused [B, L, 3C] projection at the UNet's head size of 40, with V
// from a permuted [L, B, C] buffer (batch stride smaller than row stride), on both paths: 8 heads of
// 150 queries (K and V read in place) and 2 heads of 300 (packed).
TEST(Attention, StridedSlicesOfFusedQkvAtHeadSize40) {
  for (const auto& [heads, l] : {std::pair<int, int64_t>{8, 150}, std::pair<int, int64_t>{2, 300}}) {
    SCOPED_TRACE("heads " + std::to_string(heads) + ", L " + std::to_string(l));
    const int64_t b = 2, c = heads * 40;
    const Tensor qkv = random_tensor({b, l, 3 * c}, 21, -2.0f, 2.0f);
    const Tensor q = qkv.slice(2, 0, c), k = qkv.slice(2, c, 2 * c);
    const Tensor v = random_tensor({l, b, c}, 22).permute({1, 0, 2});
    ASSERT_FALSE(q.is_contiguous());
    ASSERT_FALSE(v.is_contiguous());
    const std::vector<double> ref = attention_reference(q, k, v, heads, 1.0 / std::sqrt(40.0));
    for (const KernelLevel level : kLevels) {
      KernelPath path(level);
      EXPECT_TRUE(all_close(ops::attention(q, k, v, heads, 1.0f / std::sqrt(40.0f)), ref))
          << level_name(level) << " path";
    }
  }
}

// Cross-attention: many queries against a short context (CLIP's 77 tokens), and against Taiyi's
// 512-token BERT context, checked on the first and last rows.
TEST(Attention, CrossAttentionShapes) {
  for (const KernelLevel level : kLevels) {
    KernelPath path(level);
    SCOPED_TRACE(level_name(level));
    check_case({2, 1000, 77, 2, 40, 40}, 30);
    const int heads = 8;
    const int64_t b = 2, lq = 1024, lk = 512, d = 40;
    const Tensor q = random_tensor({b, lq, heads * d}, 31, -2.0f, 2.0f);
    const Tensor k = random_tensor({b, lk, heads * d}, 32, -2.0f, 2.0f), v = random_tensor({b, lk, heads * d}, 33);
    const float scale = 1.0f / std::sqrt(40.0f);
    const Tensor out = ops::attention(q, k, v, heads, scale);
    EXPECT_TRUE(all_close(out.slice(1, 0, 40), attention_reference(q, k, v, heads, scale, 0, 40), 1e-5, 1e-5));
    EXPECT_TRUE(
        all_close(out.slice(1, lq - 40, lq), attention_reference(q, k, v, heads, scale, lq - 40, lq), 1e-5, 1e-5));
  }
}

TEST(Attention, StridedSlicesOfFusedQkv) {
  // q, k, v as channel slices of one [B, L, 3C] projection; v from a separate, permuted buffer.
  const int heads = 4;
  const int64_t b = 2, l = 19, c = 12;
  const Tensor qkv = random_tensor({b, l, 3 * c}, 7, -2.0f, 2.0f);
  const Tensor q = qkv.slice(2, 0, c), k = qkv.slice(2, c, 2 * c);
  const Tensor v = random_tensor({l, b, 2 * c}, 8).permute({1, 0, 2}).slice(2, 3, 3 + 8);  // Dv = 2
  ASSERT_FALSE(q.is_contiguous());
  EXPECT_TRUE(all_close(ops::attention(q, k, v, heads, 0.3f), attention_reference(q, k, v, heads, 0.3f)));
  // Unit-stride violation in the last dim: copied, same result.
  const Tensor q_t = random_tensor({b, c, l}, 9).transpose(1, 2);
  EXPECT_TRUE(all_close(ops::attention(q_t, k, v, heads, 0.3f), attention_reference(q_t, k, v, heads, 0.3f)));
}

TEST(Attention, CountsFlops) {
  ops::reset_flop_count();
  ops::attention(random_tensor({2, 5, 8}, 1), random_tensor({2, 7, 8}, 2), random_tensor({2, 7, 12}, 3), 2, 1.0f);
  EXPECT_EQ(ops::flop_count(), uint64_t{2} * 2 * 5 * 7 * (8 + 12));
}

// Peak resident memory in KiB since the last reset_peak_rss(); falls back to the process peak.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";  // "5": reset the peak RSS (Linux >= 4.0)
  f.flush();
  return static_cast<bool>(f);
}
int64_t peak_rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}
int64_t current_rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

TEST(Attention, MemoryDoesNotGrowWithScoreMatrix) {
  const int64_t l = 8192, d = 8;
  const Tensor q = random_tensor({1, l, d}, 1, -2.0f, 2.0f), k = random_tensor({1, l, d}, 2, -2.0f, 2.0f);
  const Tensor v = random_tensor({1, l, d}, 3);
  if (!reset_peak_rss()) GTEST_SKIP() << "cannot reset the peak RSS (/proc/self/clear_refs)";
  const int64_t before = current_rss_kib();
  const Tensor out = ops::attention(q, k, v, 1, 0.35f);
  const int64_t growth_kib = peak_rss_kib() - before;
  // The full score matrix alone would be 8192^2 floats = 256 MiB.
  EXPECT_LT(growth_kib, 32 * 1024) << "peak RSS grew by " << growth_kib / 1024 << " MiB";
  // A few rows, including ones in the last block, still match the reference.
  const std::vector<double> ref = attention_reference(q, k, v, 1, 0.35f, l - 3, l);
  EXPECT_TRUE(all_close(out.slice(1, l - 3, l), ref, 1e-5, 1e-5));
}

TEST(Attention, RejectsBadShapes) {
  const Tensor q = random_tensor({2, 5, 8}, 1), k = random_tensor({2, 7, 8}, 2), v = random_tensor({2, 7, 8}, 3);
  EXPECT_TRUE(throws_error([&] { ops::attention(q, k, v, 3, 1.0f); }, {"attention", "not divisible by 3 heads"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::attention(q, random_tensor({2, 7, 6}, 4), v, 2, 1.0f);
      },
      {"attention", "different channels", "f32[2, 7, 6]"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::attention(q, k, random_tensor({2, 6, 8}, 4), 2, 1.0f);
      },
      {"attention", "different lengths"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::attention(q, random_tensor({1, 7, 8}, 4), v, 2, 1.0f);
      },
      {"attention", "batch sizes differ"}));
  EXPECT_TRUE(throws_error([&] { ops::attention(q.view({10, 8}), k, v, 2, 1.0f); }, {"attention", "rank 3"}));
}

}  // namespace
}  // namespace taiyi::ops_test
