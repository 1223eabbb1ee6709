// prepack_weights: convolutions and linears with constant weights run through a prepared kernel
// (weights packed once); the graph computes the same before and after. Also the prepared ops'
// epilogues, prepare_conv2d's choice of kernel, and the release of a checkpoint's pages of weights
// that a prepared kernel copied.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

TEST(PrepackWeights, PreparedConvolutionsComputeTheSame) {
  const Tensor w1 = random_tensor({16, 3, 3, 3}, 1), b1 = random_tensor({16}, 2);
  const Tensor w2 = random_tensor({16, 16, 1, 1}, 3);
  const Tensor w3 = random_tensor({8, 4, 3, 3}, 4);  // 4 groups of 4 input channels
  const auto fn = [&](const std::vector<Tensor>& in) {
    Tensor h = ops::conv2d(in[0], w1, b1, ops::Conv2dParams::same(1));
    h = ops::conv2d(ops::silu(h), w2, Tensor(), ops::Conv2dParams::same(0));
    ops::Conv2dParams strided{2, 2, 0, 0, 1, 1, 1, 1, 4};  // VAE-style (0, 1, 0, 1) padding, grouped
    h = ops::conv2d(h, w3, Tensor(), strided);
    // A convolution whose weight is computed in the graph stays an ordinary node.
    return std::vector<Tensor>{ops::conv2d(h, ops::scale(in[1], 0.5f), Tensor(), ops::Conv2dParams::same(1))};
  };
  Graph g = trace(fn, {{{2, 3, 9, 11}, DType::F32}, {{8, 8, 3, 3}, DType::F32}});
  const Tensor x = random_tensor({2, 3, 9, 11}, 5), wk = random_tensor({8, 8, 3, 3}, 6);
  const Tensor before = Executor(g).run({x, wk})[0];
  EXPECT_TRUE(prepack_weights(g));
  size_t prepared = 0;
  for (const Node& n : g.nodes) prepared += n.prepared != nullptr;
  EXPECT_EQ(prepared, 3u);  // the three convolutions with constant weights
  const Executor ex(g);
  // The 3x3 stride-1 convolution runs as Winograd F(2x2,3x3): rounding ~1e-6 of the output's scale.
  EXPECT_LE(max_abs_diff(ex.run({x, wk})[0], before), 1e-4);
  EXPECT_LE(max_abs_diff(ex.run({x, wk})[0], fn({x, wk})[0]), 1e-4);
  EXPECT_FALSE(prepack_weights(g));  // nothing left to do
}

TEST(PrepackWeights, PreparedLinearsComputeTheSame) {
  const Tensor w1 = random_tensor({24, 16}, 1), b1 = random_tensor({24}, 2), w2 = random_tensor({7, 24}, 3);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::linear(in[0], w1, b1);
    // A batched transposed view stays with the eager op, which takes strides; a [1, M, K]
    // transposed view (the VAE attention's input) is read by columns by the prepared linear.
    const Tensor t = ops::linear(ops::transpose(in[1], 1, 2), w1, Tensor());
    const Tensor u = ops::linear(ops::transpose(in[2], 1, 2), w1, b1);
    return std::vector<Tensor>{ops::linear(ops::gelu(h), w2, Tensor()), t, u};
  };
  const std::vector<InputSpec> sig = {{{2, 5, 16}, DType::F32}, {{2, 16, 3}, DType::F32}, {{1, 16, 9}, DType::F32}};
  const Tensor x = random_tensor({2, 5, 16}, 4), y = random_tensor({2, 16, 3}, 5), z = random_tensor({1, 16, 9}, 6);
  const auto want = fn({x, y, z});
  for (const DType compute : {DType::F32, DType::BF16}) {
    Graph g = trace(fn, sig);
    CompileOptions options;
    options.compute = compute;
    EXPECT_TRUE(prepack_weights(g, options));
    size_t prepared = 0, by_columns = 0;
    for (const Node& n : g.nodes) {
      prepared += n.prepared != nullptr;
      by_columns += n.prepared && n.prepared->describe().find("x^T") != std::string::npos;
    }
    EXPECT_EQ(prepared, 3u);
    EXPECT_EQ(by_columns, 1u);
    const auto got = Executor(g).run({x, y, z});
    // bf16 where the CPU runs it: bf16's rounding of 16-term products
    const double tol = compute == DType::BF16 && ops::bf16_supported() ? 5e-2 : 1e-5;
    for (int i = 0; i < 3; ++i) EXPECT_LE(max_abs_diff(got[i], want[i]), tol) << i;
  }
}

// bf16 products where the CPU has them (relative error of bf16 rounding), else a clean
// fallback to f32 (exact).
TEST(PrepackWeights, Bf16WhereSupportedElseF32) {
  const Tensor w = random_tensor({32, 8, 3, 3}, 1), wl = random_tensor({16, 32}, 2);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::conv2d(in[0], w, Tensor(), ops::Conv2dParams::same(1));
    return std::vector<Tensor>{ops::linear(ops::permute(h, {0, 2, 3, 1}), wl, Tensor()), h};
  };
  Graph g = trace(fn, {{{1, 8, 6, 6}, DType::F32}});
  const Tensor x = random_tensor({1, 8, 6, 6}, 3);
  const auto want = fn({x});
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  prepack_weights(g, bf16);
  const auto got = Executor(g).run({x});
  double ref = 0;
  for (int64_t i = 0; i < want[1].numel(); ++i) ref = std::max(ref, std::fabs(want[1].item(i)));
  if (ops::bf16_supported()) {
    EXPECT_LE(max_abs_diff(got[1], want[1]), 2e-2 * ref);
    EXPECT_GT(max_abs_diff(got[1], want[1]), 0.0);  // it really ran in bf16
  } else {
    EXPECT_LE(max_abs_diff(got[1], want[1]), 1e-5);
  }
}

// Resident bytes of the process's mapping that contains `addr` (/proc/self/smaps), or -1.
int64_t mapping_rss_bytes(const void* addr) {
  std::ifstream smaps("/proc/self/smaps");
  const auto a = reinterpret_cast<uintptr_t>(addr);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      inside = a >= lo && a < hi;
    } else if (inside && line.rfind("Rss:", 0) == 0) {
      return std::stoll(line.substr(4)) * 1024;
    }
  }
  return -1;
}

// Weights that a prepared kernel copies into its own layout (every convolution; a bf16 linear)
// leave resident memory when they are pages of a checkpoint's file mapping; an f32 linear reads
// them in place, so they stay.
TEST(PrepackWeights, ReleasesCheckpointPagesOfWeightsItCopies) {
  const int64_t n = 256;  // a [256, 256] f32 weight: 64 pages of 4 KiB
  const size_t bytes = static_cast<size_t>(n * n) * sizeof(float);
  const std::string path = ::testing::TempDir() + "taiyi_release_pages.bin";
  {
    const Tensor w = random_tensor({n, n}, 1);
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(w.data<float>()), static_cast<std::streamsize>(bytes));
  }
  for (const bool bf16 : {false, true}) {
    if (bf16 && !ops::bf16_supported()) continue;
    const int fd = open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    void* map = mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    ASSERT_NE(map, MAP_FAILED);
    const auto storage = Storage::borrow_file_pages(map, bytes, nullptr);
    const Tensor w = Tensor::from_storage(storage, 0, {n, n}, contiguous_strides({n, n}), DType::F32);
    double sum = 0;  // fault every page in
    for (int64_t i = 0; i < w.numel(); i += 1024) sum += w.data<float>()[i];
    EXPECT_TRUE(std::isfinite(sum));
    EXPECT_EQ(mapping_rss_bytes(map), static_cast<int64_t>(bytes));
    const auto fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{ops::linear(in[0], w, Tensor())}; };
    Graph g = trace(fn, {{{3, n}, DType::F32}});
    CompileOptions options;
    options.compute = bf16 ? DType::BF16 : DType::F32;
    prepack_weights(g, options);
    EXPECT_EQ(mapping_rss_bytes(map), bf16 ? 0 : static_cast<int64_t>(bytes)) << (bf16 ? "bf16" : "f32");
    // The packed copy is what the graph reads; the file still serves the eager op.
    const Tensor x = random_tensor({3, n}, 2);
    const double tol = bf16 ? 0.1 : 1e-4;
    EXPECT_LE(max_abs_diff(Executor(g).run({x})[0], fn({x})[0]), tol);
    munmap(map, bytes);
  }
  std::remove(path.c_str());
}

// TAIYI_BF16_EMULATE=1 on a CPU without bf16: the f32 kernels compute exactly what f32 products
// of bf16-rounded inputs and weights give (the eager ops on rounded copies), with the graph as
// traced and with channels-last convolutions, and with a fused residual (which stays f32).
TEST(PrepackWeights, Bf16EmulationRoundsInputsAndWeights) {
  if (ops::bf16_supported()) GTEST_SKIP() << "this CPU runs bf16 itself; emulation applies only without it";
  const auto round = [](const Tensor& t) { return ops::cast(ops::cast(t, DType::BF16), DType::F32); };
  const Tensor w = random_tensor({32, 8, 3, 3}, 1), wl = random_tensor({16, 32}, 2), bl = random_tensor({16}, 4);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::add(ops::conv2d(in[0], w, Tensor(), ops::Conv2dParams::same(1)), in[1]);
    return std::vector<Tensor>{ops::linear(in[2], wl, bl), h};
  };
  const Tensor x = random_tensor({1, 8, 6, 6}, 3), r = random_tensor({1, 32, 6, 6}, 5), xl = random_tensor({3, 32}, 6);
  const Tensor want_h = ops::add(ops::conv2d(round(x), round(w), Tensor(), ops::Conv2dParams::same(1)), r);
  const Tensor want_l = ops::linear(round(xl), round(wl), bl);
  const auto plain = fn({x, r, xl});
  setenv("TAIYI_BF16_EMULATE", "1", 1);
  for (const bool channels_last : {false, true}) {
    Graph g = trace(fn, {{{1, 8, 6, 6}, DType::F32}, {{1, 32, 6, 6}, DType::F32}, {{3, 32}, DType::F32}});
    if (channels_last) channels_last_transformers(g);
    fuse_residual_add(g);
    CompileOptions bf16;
    bf16.compute = DType::BF16;
    prepack_weights(g, bf16);
    size_t emulated = 0;
    for (const Node& n : g.nodes)
      emulated += n.prepared && n.prepared->describe().find("(bf16 emulated)") != std::string::npos;
    EXPECT_EQ(emulated, 2u);
    const auto got = Executor(g).run({x, r, xl});
    EXPECT_LE(max_abs_diff(got[1], want_h), 1e-5) << "channels_last " << channels_last;
    EXPECT_LE(max_abs_diff(got[0], want_l), 1e-5) << "channels_last " << channels_last;
    EXPECT_GT(max_abs_diff(got[1], plain[1]), 1e-4) << "channels_last " << channels_last;  // rounded
    EXPECT_GT(max_abs_diff(got[0], plain[0]), 1e-4) << "channels_last " << channels_last;
  }
  unsetenv("TAIYI_BF16_EMULATE");
}

}  // namespace
}  // namespace taiyi::graph

namespace taiyi::graph {
namespace {

// The epilogue of a prepared op, directly: out = (op(x) + residual) * scale, with the output in
// NCHW or channels-last memory (the convolution's own post-ops or the reorder's), and in place
// (out is the residual's memory).
TEST(PreparedEpilogue, ResidualAndScaleInEveryLayout) {
  using testing::max_abs_diff;
  using testing::random_tensor;
  const Tensor w = random_tensor({24, 16, 3, 3}, 1), b = random_tensor({24}, 2);
  const Tensor x = random_tensor({2, 16, 7, 9}, 3), r = random_tensor({2, 24, 7, 9}, 4);
  const Tensor want = ops::scale(ops::add(ops::conv2d(x, w, b, ops::Conv2dParams::same(1)), r), 0.75f);
  ops::Epilogue e;
  e.residual = true;
  e.scale = 0.75f;
  for (const ops::Layout dst : {ops::Layout::kNCHW, ops::Layout::kNHWC})
    for (const bool in_place : {false, true}) {
      SCOPED_TRACE(std::string(dst == ops::Layout::kNHWC ? "nhwc" : "nchw") + (in_place ? " in place" : ""));
      const auto op =
          ops::prepare_conv2d(x.shape(), w, b, ops::Conv2dParams::same(1), DType::F32, ops::Layout::kNCHW, dst, e);
      const Strides st = ops::layout_strides(r.shape(), dst);
      Tensor res = Tensor::from_storage(Storage::allocate(r.numel() * 4), 0, r.shape(), st, DType::F32);
      res.copy_from(r);
      Tensor out =
          in_place ? res : Tensor::from_storage(Storage::allocate(r.numel() * 4), 0, r.shape(), st, DType::F32);
      const auto scratch = Storage::allocate(op->scratch_bytes() + 64);  // 64-byte aligned, as the arena
      op->run({x, res}, out, scratch->data());
      EXPECT_LE(max_abs_diff(out, want), 1e-5);
    }
  const Tensor wl = random_tensor({24, 16}, 5), bl = random_tensor({24}, 6);
  const Tensor xl = random_tensor({3, 5, 16}, 7), rl = random_tensor({3, 5, 24}, 8);
  const Tensor want_l = ops::scale(ops::add(ops::linear(xl, wl, bl), rl), 0.75f);
  for (const bool in_place : {false, true}) {
    const auto op = ops::prepare_linear(xl.shape(), wl, bl, DType::F32, e);
    Tensor res = rl.clone();
    Tensor out = in_place ? res : Tensor::empty(rl.shape());
    const auto scratch = Storage::allocate(op->scratch_bytes() + 64);
    op->run({xl, res}, out, scratch->data());
    EXPECT_LE(max_abs_diff(out, want_l), 1e-5) << (in_place ? "in place" : "");
  }
}

// A bf16 linear writing bf16 with a residual (the transformer's last feed-forward, read by
// proj_out): the residual is added in f32 and the sum rounded once, the f32 output rounded.
TEST(PreparedEpilogue, Bf16OutputWithResidualIsTheF32SumRounded) {
  using testing::random_tensor;
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  const Tensor w = random_tensor({40, 32}, 1), b = random_tensor({40}, 2);
  const Tensor x = ops::cast(random_tensor({2, 9, 32}, 3), DType::BF16), r = random_tensor({2, 9, 40}, 4);
  ops::Epilogue e;
  e.residual = true;
  const auto f32_out = ops::prepare_linear(x.shape(), w, b, DType::BF16, e, DType::BF16, DType::F32);
  const auto bf16_out = ops::prepare_linear(x.shape(), w, b, DType::BF16, e, DType::BF16, DType::BF16);
  EXPECT_NE(bf16_out->describe().find("bf16-out +residual"), std::string::npos) << bf16_out->describe();
  const auto scratch = Storage::allocate(std::max(f32_out->scratch_bytes(), bf16_out->scratch_bytes()) + 64);
  Tensor want = r.clone();  // in place, as the planner may place it
  f32_out->run({x, want}, want, scratch->data());
  Tensor got = Tensor::empty(r.shape(), DType::BF16);
  bf16_out->run({x, r}, got, scratch->data());
  EXPECT_EQ(testing::max_abs_diff(ops::cast(got, DType::F32), ops::cast(ops::cast(want, DType::BF16), DType::F32)),
            0.0);
  // The residual is read, not written.
  EXPECT_EQ(testing::max_abs_diff(r, random_tensor({2, 9, 40}, 4)), 0.0);
}

}  // namespace
}  // namespace taiyi::graph

namespace taiyi::graph {
namespace {

// prepare_conv2d's choice of kernel: Winograd F(4x4,3x3) at >= 16x16 outputs, F(2x2,3x3) below,
// oneDNN for anything else (stride 2, 1x1) and for everything under TAIYI_WINOGRAD=0; each
// computes the eager convolution.
TEST(PrepareConv2d, PicksWinogradTileByOutputSize) {
  using testing::max_abs_diff;
  using testing::random_tensor;
  if (!ops::cpu::cpu_has_avx2_fma()) GTEST_SKIP() << "the Winograd kernels need AVX2+FMA";
  const Tensor w = random_tensor({8, 8, 3, 3}, 1), b = random_tensor({8}, 2);
  struct Case {
    int64_t size;
    ops::Conv2dParams p;
    const char* kernel;
  };
  const ops::Conv2dParams stride2{2, 2, 1, 1, 1, 1, 1, 1, 1};
  const Case cases[] = {{32, ops::Conv2dParams::same(1), "winograd_f43"},
                        {16, ops::Conv2dParams::same(1), "winograd_f43"},
                        {8, ops::Conv2dParams::same(1), "winograd_f23"},
                        {32, stride2, nullptr}};  // oneDNN: jit:avx2, brgconv:avx512_core, ...
  for (const char* env : {"", "0"}) {
    if (*env)
      setenv("TAIYI_WINOGRAD", env, 1);
    else
      unsetenv("TAIYI_WINOGRAD");
    for (const Case& c : cases) {
      const Tensor x = random_tensor({1, 8, c.size, c.size}, 3);
      const auto op = ops::prepare_conv2d(x.shape(), w, b, c.p);
      const char* want = std::string(env) == "0" ? nullptr : c.kernel;
      if (want)
        EXPECT_NE(op->describe().find(want), std::string::npos)
            << "TAIYI_WINOGRAD=" << env << " size " << c.size << ": " << op->describe();
      else
        EXPECT_EQ(op->describe().find("winograd"), std::string::npos)
            << "TAIYI_WINOGRAD=" << env << " size " << c.size << ": " << op->describe();
      const Tensor want_y = ops::conv2d(x, w, b, c.p);
      Tensor y = Tensor::empty(want_y.shape());
      const auto scratch = Storage::allocate(op->scratch_bytes() + 64);  // 64-byte aligned, as the arena
      op->run({x}, y, scratch->data());
      EXPECT_LE(max_abs_diff(y, want_y), 1e-4);
    }
  }
  unsetenv("TAIYI_WINOGRAD");
}

}  // namespace
}  // namespace taiyi::graph
