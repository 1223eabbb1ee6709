// Prepared bf16 linear on AMX tiles: out = x w^T + bias (+ residual), x [M, K] bf16 rows, out f32
// or bf16 (rounded to nearest even as stored), or gelu(x w^T + bias), for every bf16 linear on AMX
// with no post-op or a gelu (the GEGLU's gate product, with its multiply post-op, stays with
// oneDNN's matmul). Two modes:
//
// K blocks (K >= kMinK = 1280: BERT's output dense [1024, 3072] x [3072, 768], where oneDNN 2.6's
// brgemm matmul runs at 1.2-1.6 TFLOP/s; the UNet's feed-forward outputs and 16x16 projections).
// Each thread takes a range of rows; per chunk of 384 columns, per strip of 256 rows:
//   - K in blocks of 256 (8 steps of 32; the last block K mod 256): the strip's x block is copied
//     into A tiles, 1 KiB each, contiguous (rows of x are K apart, 6 KiB at K = 3072, so the 32 rows
//     of a C block fall into two L1 sets and evict one another: with the copy the kernel went from
//     oneDNN's speed to 1.4x it);
//   - per 32 rows, per 32 columns: 2 x 2 tiles of C (from the f32 accumulators after the first K
//     block: 256 x 384, 384 KiB, in L2 with the block's A tiles and B panels), the block's steps of
//     2 A tiles (in L1 across the columns) and 2 B tiles (w packed once: panel nb (32 columns), step
//     s of all of K, half t: [N/32][K/32][2][16 pairs][16 columns][2]), and the C tiles stored back;
//   - in the last K block, each C block's epilogue (bias, residual, the output rows) runs during the
//     next block's products, and each K block prefetches the next one's B into L2 (as below).
//
// All of K (K < 1280: BERT's other linears, the UNet's projections with K = 320, 640 and 768),
// run_whole_k: A tiles of a strip's rows over all of K and B panels of a chunk of columns in L2;
// where K fits one K block of up to 10 steps (320), each C block stays in its tiles over every
// step; longer K goes in K blocks of up to 10 steps (768: 3 of 8), each block's 2 A tiles a step in
// L1 across a group of a chunk's panels, the group's C blocks in L1 between K blocks. Each group's
// epilogue runs during the next group's products, and the next chunk of B is prefetched into L2
// (see there).
//
// Products and sums in f32 in the tiles, K in the same order as oneDNN's (steps of 32), so results
// agree with its to f32 rounding (bench/linear_bench: identical bf16 outputs on BERT's shapes).
// ops::prepare_linear picks it (ops/prepared.cpp; TAIYI_AMX_LINEAR=0 turns it off for A/B runs,
// TAIYI_AMX_LINEAR_WHOLE_K=0 only the whole-K mode, TAIYI_AMX_LINEAR_STEAL=0 its work stealing).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "taiyi/ops/cpu/amx_tile_config.h"
#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/cpu/work_units.h"
#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused merge
// source of their unmasked forms, which -Wmaybe-uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

namespace taiyi::ops::cpu {

namespace {

constexpr int64_t kKc = 256;                      // K per block
constexpr int64_t kSteps = kKc / 32;              // tile steps per K block
constexpr int64_t kTile = 512;                    // bf16 elements of a 16 x 64-byte tile
constexpr int64_t kStrip = 256;                   // rows per strip
constexpr int64_t kChunk = 384;                   // columns per chunk (a strip's f32 accumulators: 384 KiB)
constexpr int64_t kMinK = 1280;                   // from here the K-block mode; shorter reductions the whole-K mode
constexpr size_t kStripBytes = 768 * 1024;        // whole-K mode: a strip's A tiles (rows x K bf16), in L2
constexpr size_t kChunkBytes = 512 * 1024;        // whole-K mode: a chunk's B panels (columns x K bf16), in L2
constexpr int64_t kWholeBlockSteps = 10;          // whole-K mode: most steps of a K block (its A tiles in L1)
constexpr size_t kBlockedChunkBytes = 96 * 1024;  // the same, for K of more than one K block

size_t round_up64(size_t n) { return (n + 63) / 64 * 64; }

#if defined(__x86_64__)
class LinearBf16Amx : public PreparedOp {
 public:
  LinearBf16Amx(const Shape& xs, const Tensor& w, const Tensor& bias, const Epilogue& epilogue, DType dst)
      : k_(xs.back()),
        n_(w.size(0)),
        m_(shape_numel(xs) / xs.back()),
        kblocks_((k_ + kKc - 1) / kKc),
        whole_k_(k_ < kMinK),
        gelu_(epilogue.post_op == PostOp::kGelu),
        ln_eps_(epilogue.layer_norm_eps),
        residual_(epilogue.residual),
        residual_dtype_(epilogue.residual_dtype),
        dst_(dst),
        threads_(std::max(1, omp_get_max_threads())) {
    // w [N, K] f32 into B tiles: panel nb (32 columns), K block kb, step s (of steps(kb)), half t
    // (16 columns): row r holds the pairs (k, k + 1) = (kb 256 + s 32 + 2 r, + 1) of columns nb 32 +
    // t 16 + c. Panel nb's block kb starts at nb K 32 + kb 256 32 elements.
    const Tensor wc = w.contiguous();
    const float* wp = wc.data<float>();
    packed_ = Tensor::empty({n_ * k_}, DType::BF16);
    uint16_t* b = packed_.data_u16();
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < n_ / 32; ++nb)
      for (int64_t s = 0; s < k_ / 32; ++s)  // steps over all of K: block s / 8, step s % 8
        for (int64_t t = 0; t < 2; ++t) {
          uint16_t* tile = b + nb * k_ * 32 + (s * 2 + t) * kTile;
          for (int64_t r = 0; r < 16; ++r)
            for (int64_t c = 0; c < 16; ++c)
              for (int64_t i = 0; i < 2; ++i)
                tile[r * 32 + c * 2 + i] = f32_to_bf16(wp[(nb * 32 + t * 16 + c) * k_ + s * 32 + 2 * r + i]);
        }
    if (bias.defined()) bias_ = bias.contiguous();
    if (epilogue.layer_norm_gamma.defined()) ln_gamma_ = epilogue.layer_norm_gamma.contiguous();
    if (epilogue.layer_norm_beta.defined()) ln_beta_ = epilogue.layer_norm_beta.contiguous();
    packed_ptr_ = packed_.data_u16();
    bias_ptr_ = bias_.defined() ? bias_.data<float>() : nullptr;
    if (whole_k_) {
      const int64_t blocks = (k_ / 32 + kWholeBlockSteps - 1) / kWholeBlockSteps;
      bsteps_ = (k_ / 32 + blocks - 1) / blocks;
      strip_ = std::clamp<int64_t>(static_cast<int64_t>(kStripBytes) / (k_ * 2) / 32 * 32, 32, 512);
      chunk_ = std::clamp<int64_t>(
          static_cast<int64_t>(blocks > 1 ? kBlockedChunkBytes : kChunkBytes) / (k_ * 2) / 32 * 32, 32, n_);
      group_ = blocks > 1 ? chunk_ / 32 : 1;
      a_bytes_ = round_up64(static_cast<size_t>(strip_ * k_) * 2);
      // two groups' C blocks (4 tiles of 1 KiB a panel): the one summed, the one its epilogue reads
      acc_bytes_ = static_cast<size_t>(2 * group_) * 4096;
    } else {
      a_bytes_ = round_up64(static_cast<size_t>(kStrip * kKc) * 2);
      acc_bytes_ = round_up64(static_cast<size_t>(kStrip * kChunk) * 4);
    }
    describe_ =
        std::string("linear bf16 amx (") +
        (whole_k_ ? std::to_string(strip_) + " rows x " + std::to_string(chunk_) + " columns x all of K"
                  : std::to_string(kStrip) + " rows x " + std::to_string(kChunk) + " columns x K blocks of 256") +
        ") bf16-in" + (dst == DType::BF16 ? " bf16-out" : "") + (gelu_ ? " +gelu" : "") +
        (residual_ ? (residual_dtype_ == DType::BF16 ? " +bf16 residual" : " +residual") : "") +
        (ln_eps_ > 0 ? " +layer norm" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    const Tensor x = in.at(0).contiguous();
    if (x.dtype() != DType::BF16 || x.numel() != m_ * k_)
      throw Error("linear (amx): prepared for a bf16 input of " + std::to_string(m_) + " x " + std::to_string(k_) +
                  ", given " + x.describe());
    if (!out.is_contiguous() || out.dtype() != dst_ || out.numel() != m_ * n_)
      throw Error("linear (amx): prepared for a contiguous " + std::string(dtype_name(dst_)) + " output of " +
                  std::to_string(m_) + " x " + std::to_string(n_) + ", given " + out.describe());
    Tensor residual;
    if (residual_) {
      residual = in.at(1).contiguous();
      if (residual.dtype() != residual_dtype_ || residual.numel() != m_ * n_)
        throw Error("linear (amx): the residual " + residual.describe() + " does not match the output " +
                    out.describe());
    }
    if (whole_k_) {
      run_whole_k(x.data_u16(), residual_ ? residual.raw_data() : nullptr, out.raw_data(), scratch);
    } else {
      run_amx(x.data_u16(), residual_ ? residual.raw_data() : nullptr, out.raw_data(), scratch);
    }
  }

  // The output in 32-row blocks of A tiles (write_tiles) for a K-block linear that reads them in
  // place (read_tiles): graph/passes/link_linear_tiles.cpp, where the second is the first's only
  // reader. The bytes are those of the [M, N] output, in another order.
  bool write_tiles(bool on) const override {
    if (on && !(dst_ == DType::BF16 && !residual_ && !(ln_eps_ > 0) && m_ % 32 == 0)) return false;
    tiled_out_ = on;
    return true;
  }
  bool read_tiles(bool on) const override {
    if (on && !(!whole_k_ && m_ % 32 == 0)) return false;
    tiled_in_ = on;
    return true;
  }

  size_t scratch_bytes() const override { return static_cast<size_t>(threads_) * (a_bytes_ + acc_bytes_) + 64; }
  size_t packed_weight_bytes() const override { return static_cast<size_t>(n_ * k_) * 2; }
  std::string describe() const override {
    return describe_ + (tiled_out_ ? " (writes A tiles)" : "") + (tiled_in_ ? " (reads A tiles)" : "");
  }
  double flops() const override { return 2.0 * m_ * n_ * k_; }

 private:
  // The LayerNorm epilogue (ln_eps_ > 0): rows [r0, r1) of the bf16 output, which this thread has
  // written whole, normalised in place while they are in its L2 (the separate LayerNorm read them
  // back from L3: BERT's 25 a text encoder 4 ms).
  void layer_norm_rows(int64_t r0, int64_t r1, void* out) const {
    if (!(ln_eps_ > 0) || r1 <= r0) return;
    uint16_t* y = static_cast<uint16_t*>(out) + r0 * n_;
    layer_norm_bf16_rows(y, ln_gamma_.defined() ? ln_gamma_.data<float>() : nullptr,
                         ln_beta_.defined() ? ln_beta_.data<float>() : nullptr, y, r1 - r0, n_, ln_eps_);
  }

  // A C block whose tiles are stored and whose epilogue has yet to run: c [4][16][16] f32 (tiles t0-t3),
  // its first row and column.
  struct Pending {
    const float* c = nullptr;
    int64_t row0 = 0, col0 = 0;
    int64_t panels = 1;  // blocks of 32 columns side by side (panel q's tiles at c + q 1024)
  };

  // Lines of packed B to bring into L2 a few at a time while products run: `panels` panels from
  // panel q0, `steps` steps of 32 K each from step st0 (2 KiB a step), per_step lines per issue().
  struct BPrefetch {
    const char* first = nullptr;
    int64_t panel_bytes = 0, lines = 0, panels = 0, next = 0, per_step = 0;
    int64_t total() const { return lines * panels; }
    void issue() {
      for (int64_t u = 0; u < per_step && next < lines * panels; ++u, ++next)
        prefetch_line(first + next / lines * panel_bytes + next % lines * 64, false, 1);
    }
  };
  BPrefetch b_prefetch(int64_t q0, int64_t panels, int64_t st0, int64_t steps) const {
    BPrefetch pf;
    pf.first = reinterpret_cast<const char*>(packed_ptr_ + q0 * k_ * 32 + st0 * 2 * kTile);
    pf.panel_bytes = k_ * 64;
    pf.lines = steps * 2 * kTile * 2 / 64;
    pf.panels = panels;
    return pf;
  }

  // Tile steps (of 32 K) in K block kb: 8, the last block K mod 256 / 32 where that is not 0.
  int64_t steps(int64_t kb) const { return std::min(kSteps, k_ / 32 - kb * kSteps); }

  // This thread's share of a run: its A tiles and f32 buffer in scratch, and its rows [r0, r1)
  // (whole blocks of 32 rows, split evenly); with the tile configuration loaded (all eight tiles 16
  // rows of 64 bytes). Call inside the parallel region.
  struct ThreadPart {
    uint16_t* a;
    float* buf;
    int64_t r0, r1;
  };
  TAIYI_TARGET_AMX ThreadPart thread_part(std::byte* scratch) const {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.set(t, 16, 64);
    _tile_loadconfig(&cfg);
    return part_of(scratch, omp_get_thread_num(), omp_get_num_threads());
  }
  // Thread id's share of nt (its buffers and rows), from any thread.
  ThreadPart part_of(std::byte* scratch, int64_t id, int64_t nt) const {
    const int64_t blocks = (m_ + 31) / 32;
    std::byte* mine = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch) + 63) / 64 * 64) +
                      static_cast<size_t>(id) * (a_bytes_ + acc_bytes_);
    return {reinterpret_cast<uint16_t*>(mine), reinterpret_cast<float*>(mine + a_bytes_), blocks * id / nt * 32,
            std::min(m_, blocks * (id + 1) / nt * 32)};
  }
  int run_threads() const { return std::min(threads_, std::max(1, omp_get_max_threads())); }

  // K-block mode: a thread's units are its (chunk, strip) pairs, chunk by chunk; each packs its own
  // A blocks into the thread's buffer and sums into the thread's accumulators, so a thread that has
  // done its own takes whole units from the ends of the others' (as in the whole-K mode; UNet step
  // 0.793 -> 0.780 s, 3 pairs: its 64x64 and 32x32 feed-forward outputs have 8-16 units a thread;
  // BERT's output dense 4 of ~0.5 ms, which only a long preemption leaves to take).
  TAIYI_TARGET_AMX void run_amx(const uint16_t* x, const void* residual, void* out, std::byte* scratch) const {
    std::vector<WorkUnits> units(static_cast<size_t>(run_threads()));
#pragma omp parallel num_threads(run_threads())
    {
      const auto [a, acc, r0, r1] = thread_part(scratch);
      const int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
      WorkUnits& own = units[static_cast<size_t>(id)];
      own.reset(strips(r0, r1) * chunks(), true);
      Pending pending;  // the last K block's C block whose epilogue runs during the next block
      for (int64_t u; (u = own.take_front()) >= 0;) {
        run_kblock_unit(x, a, acc, r0, r1, u, pending, residual, out);
        if (u == 0) stall_point_for_tests(id);  // (test support: after its first unit)
      }
      if (steal_)
        take_from_others(units.data(), id, nt, [&](int64_t victim, int64_t u) TAIYI_TARGET_AMX {
          const ThreadPart part = part_of(scratch, victim, nt);
          run_kblock_unit(x, a, acc, part.r0, part.r1, u, pending, residual, out);
        });
      if (pending.c)
        for (int64_t i = 0; i < 32; ++i) epilogue_row(pending, i, residual, out);
      _tile_release();
      if (ln_eps_ > 0) {
#pragma omp barrier
      }
      layer_norm_rows(r0, r1, out);
    }
  }
  int64_t strips(int64_t r0, int64_t r1) const { return (r1 - r0 + strip_ - 1) / strip_; }

  // Unit u of rows [r0, r1) in the K-block mode: chunk u / strips, strip u % strips, all of K, into
  // this thread's A buffer a and accumulators acc.
  TAIYI_TARGET_AMX void run_kblock_unit(const uint16_t* x, uint16_t* a, float* acc, int64_t r0, int64_t r1, int64_t u,
                                        Pending& pending, const void* residual, void* out) const {
    const int64_t n0 = u / strips(r0, r1) * chunk_, s0 = r0 + u % strips(r0, r1) * strip_;
    const int64_t panels = std::min(chunk_, n_ - n0) / 32;
    const int64_t rows = std::min(strip_, r1 - s0), mblocks = (rows + 31) / 32;
    // (tiled input, read_tiles: x holds 32-row blocks of A tiles over all of K, as pack_rows
    // writes them for one K block: each block's A tiles read in place)
    const int64_t a_block = (tiled_in_ ? k_ / 32 : kSteps) * 2 * kTile;  // elements from one 32-row block to the next
    for (int64_t kb = 0; kb < kblocks_; ++kb) {
      const uint16_t* ak = tiled_in_ ? x + (s0 / 32 * (k_ / 32) + kb * kSteps) * 2 * kTile : a;
      if (!tiled_in_) pack_rows(x + s0 * k_ + kb * kKc, rows, steps(kb), kSteps, a);
      // The next K block's B (the next strip's, or the next chunk's, first after the last),
      // into L2 while this one runs: it comes from L3 or memory otherwise, at the first 32 rows.
      int64_t q0 = n0 / 32, qn = panels, qk = kb + 1;
      if (qk == kblocks_) {
        qk = 0;
        if (s0 + strip_ >= r1) {
          q0 = (n0 + chunk_) / 32;
          qn = std::max<int64_t>(0, std::min(chunk_, n_ - n0 - chunk_) / 32);
        }
      }
      BPrefetch pf = b_prefetch(q0, qn, qk * kSteps, steps(qk));
      pf.per_step = pf.total() / (mblocks * panels * steps(kb)) + 1;
      bool loaded = false;  // tiles 4-7 hold the block's first step (loaded during the one before)
      for (int64_t mb = 0; mb < mblocks; ++mb) {
        const uint16_t* ab = ak + mb * a_block;
        for (int64_t p = 0; p < panels; ++p) {
          float* c = acc + (mb * panels + p) * 1024;
          // the next block's first A and B tiles, loaded during this one's last step
          const uint16_t* na = p + 1 < panels ? ab : mb + 1 < mblocks ? ab + a_block : nullptr;
          const uint16_t* nb =
              packed_ptr_ + (n0 / 32 + (p + 1 < panels ? p + 1 : 0)) * k_ * 32 + kb * kSteps * 2 * kTile;
          block(ab, kb, n0 / 32 + p, c, loaded, na, nb, pf, pending, residual, out);
          loaded = na != nullptr;
          if (kb + 1 == kblocks_) pending = Pending{c, s0 + mb * 32, n0 + p * 32, 1};
        }
      }
    }
  }

  // Whole-K mode (K < kMinK). Each thread takes a range of rows; per strip of strip_ rows (A tiles
  // of all of K, up to kStripBytes, in L2), per chunk of chunk_ columns (B panels, up to
  // kChunkBytes, in L2), per 32 rows, per group of group_ panels of 32 columns: per K block of
  // bsteps_ steps, per panel, the 2 x 2 C tiles start at zero or from the group's buffer and take the
  // block's steps, then go back to it (one of two, 4 KiB a panel). Where K has more than one block
  // (K = 640, 768), a group is a chunk of 96 KiB of B (64 columns at K = 768), and the block's two A
  // tiles a step stay in L1 across its panels; the same loop with all of K per panel, A and B both
  // from L2, was slower: BERT's text encoder 0.1115 -> 0.1085 s (medians of six A/B pairs), and
  // 0.111 -> 0.105 with the panel-to-panel loads in the loop below. Where one block holds K (320),
  // a group is a panel. Per step of a group, also:
  //   - a few rows of the previous group's epilogue, so that its vector work and stores overlap the
  //     products (BERT's [1024, 768] x [768, 3072] with the epilogue after each block: 2.24 ms, 1.43
  //     with none at all, 1.85 overlapped);
  //   - two rows of this group's output (and residual) prefetched for that epilogue: they are N
  //     apart, and the residual's loads were 40% of the kernel's samples (perf);
  //   - a share of the next chunk's B panels prefetched into L2 (the next strip's first after the
  //     last): in the graph the weights come from L3 or memory, and each chunk's first 32 rows
  //     waited on them (BERT's q/k/v 1.63 -> 2.06 TFLOP/s in the text encoder's profile).
  // B is loaded with the non-temporal hint (amx_step_2x2<true>). The work is in units of 32 rows by
  // a chunk (WorkUnits): a thread that has done its own takes the last units of the others' last strips,
  // which evens out the host's preemptions (its threads had waited 26-128 us a call for each other,
  // 4.3% of the text encoder's samples in libgomp, 2.8% after; UNet step 0.939 -> 0.921 s).
  TAIYI_TARGET_AMX void run_whole_k(const uint16_t* x, const void* residual, void* out, std::byte* scratch) const {
    const int64_t steps = k_ / 32;
    // rows of the previous group's epilogue per step of the next (all of them within its steps but
    // the last; a smaller group, a chunk's last, finishes the rest after its steps)
    const int64_t group_steps = steps * group_;
    const int64_t per_step = std::max<int64_t>(1, (32 + group_steps - 2) / std::max<int64_t>(1, group_steps - 1));
    std::vector<WorkUnits> units(static_cast<size_t>(run_threads()));
#pragma omp parallel num_threads(run_threads())
    {
      const auto [a, cbuf, r0, r1] = thread_part(scratch);
      const int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
      WorkUnits& own = units[static_cast<size_t>(id)];
      own.reset(unit_count(r0, r1), false);
      Pending pending;
      int cur = 0;
      int64_t packed = -1, chunk = -1;
      BPrefetch pf;
      for (int64_t u; (u = own.take_front()) >= 0;) {
        const Unit w = unit(r0, r1, u);
        if (w.strip != packed) {
          packed = w.strip;
          const int64_t s0 = r0 + w.strip * strip_;
          pack_rows(x + s0 * k_, std::min(strip_, r1 - s0), steps, steps, a);
          chunk = -1;
          // (from here the others may take this strip's last units: it is this thread's last)
          if (s0 + strip_ >= r1) own.open_up();
        }
        if (w.chunk != chunk) {
          chunk = w.chunk;
          const int64_t s0 = r0 + w.strip * strip_, n0 = w.chunk * chunk_, p1 = std::min(n_, n0 + chunk_) / 32;
          // The next chunk's B panels (the next strip's first where this is the last), into L2
          // while this chunk runs: a chunk's first 32 rows otherwise wait on memory for each panel.
          int64_t q0 = p1, qn = std::min(n_, p1 * 32 + chunk_) / 32 - p1;
          if (p1 == n_ / 32) {
            q0 = 0;
            qn = s0 + strip_ < r1 ? std::min(n_, chunk_) / 32 : 0;
          }
          pf = b_prefetch(q0, qn, 0, steps);
          pf.per_step = pf.total() / (w.mblocks * (p1 - n0 / 32) * std::max<int64_t>(1, steps - 1)) + 1;
        }
        run_unit(a, r0, w, steps, per_step, pf, pending, cbuf, cur, residual, out);
        if (w.chunk == 0 && w.mb == 0 && r0 + (w.strip + 1) * strip_ >= r1)
          stall_point_for_tests(id);  // (test support: after its last strip's first unit)
      }
      // Then the last units of the other threads' last strips, from their ends (the host's
      // preemptions made one thread finish up to 2 ms after the other: a static split of rows
      // cannot even that out).
      BPrefetch none;
      if (steal_)
        take_from_others(units.data(), id, nt, [&](int64_t victim, int64_t u) TAIYI_TARGET_AMX {
          const ThreadPart part = part_of(scratch, victim, nt);
          run_unit(part.a, part.r0, unit(part.r0, part.r1, u), steps, per_step, none, pending, cbuf, cur, residual,
                   out);
        });
      if (pending.c)
        for (int64_t i = 0; i < 32; ++i) epilogue_row(pending, i, residual, out);
      _tile_release();
      if (ln_eps_ > 0) {
#pragma omp barrier
      }
      layer_norm_rows(r0, r1, out);
    }
  }

  // A whole-K unit of work (a thread's WorkUnits: (strip, chunk, 32 rows) in that order, open once
  // the owner has packed its last strip, whose units the others then take: they read its A tiles;
  // in the K-block mode (chunk, strip), open from the start).
  struct Unit {
    int64_t strip, chunk, mb, mblocks;  // mblocks: row blocks of the strip
  };
  int64_t chunks() const { return (n_ + chunk_ - 1) / chunk_; }
  int64_t unit_count(int64_t r0, int64_t r1) const { return (r1 - r0 + 31) / 32 * chunks(); }
  Unit unit(int64_t r0, int64_t r1, int64_t u) const {
    const int64_t full = strip_ / 32 * chunks();  // units of a whole strip
    const int64_t strip = u / full, s0 = r0 + strip * strip_, mblocks = (std::min(strip_, r1 - s0) + 31) / 32;
    const int64_t local = u - strip * full;
    return {strip, local / mblocks, local % mblocks, mblocks};
  }

  // Unit w of the thread with rows from r0 and A tiles a: its 32 rows by the chunk's panels.
  TAIYI_TARGET_AMX void run_unit(const uint16_t* a, int64_t r0, const Unit& w, int64_t steps, int64_t per_step,
                                 BPrefetch& pf, Pending& pending, float* cbuf, int& cur, const void* residual,
                                 void* out) const {
    const int64_t row0 = r0 + w.strip * strip_ + w.mb * 32, n0 = w.chunk * chunk_;
    const int64_t q1 = std::min(n_, n0 + chunk_) / 32;
    const uint16_t* ab = a + w.mb * steps * 2 * kTile;
    bool loaded = false;  // tiles 4-7 hold the first step of the next (group, K block, panel) already
    for (int64_t g0 = n0 / 32; g0 < q1; g0 += group_) {
      const int64_t np = std::min(group_, q1 - g0);
      float* c = cbuf + cur * group_ * 1024;
      cur ^= 1;
      const Pending next{c, row0, g0 * 32, np};
      int64_t done = 0, issued = 0;  // rows of pending's epilogue done; steps of this group so far
      for (int64_t s0 = 0; s0 < steps; s0 += bsteps_) {
        const int64_t s1 = std::min(steps, s0 + bsteps_);
        for (int64_t p = 0; p < np; ++p) {
          const uint16_t* bb = packed_ptr_ + (g0 + p) * k_ * 32;
          float* cp = c + p * 1024;
          start_c(s0 == 0 ? nullptr : cp);
          if (!loaded) load_operands(ab + s0 * 2 * kTile, bb + s0 * 2 * kTile);
          // The next (group, K block, panel)'s first step, loaded during this one's last: the
          // operands of a panel's first products otherwise waited on L2 after its C tiles were
          // stored (a /tmp probe of BERT's intermediate dense: 1.52 -> 1.39 ms).
          const uint16_t *na = nullptr, *nb = nullptr;
          if (p + 1 < np) {
            na = ab + s0 * 2 * kTile;
            nb = packed_ptr_ + (g0 + p + 1) * k_ * 32 + s0 * 2 * kTile;
          } else if (s1 < steps) {
            na = ab + s1 * 2 * kTile;
            nb = packed_ptr_ + g0 * k_ * 32 + s1 * 2 * kTile;
          } else if (g0 + group_ < q1) {
            na = ab;
            nb = packed_ptr_ + (g0 + group_) * k_ * 32;
          }
          for (int64_t st = s0; st < s1; ++st, ++issued) {
            const bool more = st + 1 < s1;
            amx_step_2x2<true>(more ? ab + (st + 1) * 2 * kTile : na, more ? bb + (st + 1) * 2 * kTile : nb);
            if (issued < 16) prefetch_rows(next, 2 * issued, residual, out);
            pf.issue();
            if (pending.c)
              for (int64_t u = 0; u < per_step && done < 32; ++u) epilogue_row(pending, done++, residual, out);
          }
          loaded = na != nullptr;
          store_c(cp);
        }
      }
      if (pending.c)
        while (done < 32) epilogue_row(pending, done++, residual, out);
      pending = next;
    }
  }

  // C tiles 0-3 zeroed (c null) or loaded from the 4 KiB block at c.
  TAIYI_TARGET_AMX static void start_c(const float* c) {
    if (!c) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      return;
    }
    _tile_loadd(0, c, 64);
    _tile_loadd(1, c + 256, 64);
    _tile_loadd(2, c + 512, 64);
    _tile_loadd(3, c + 768, 64);
  }
  // C tiles 0-3 into the 4 KiB block at c.
  TAIYI_TARGET_AMX static void store_c(float* c) {
    _tile_stored(0, c, 64);
    _tile_stored(1, c + 256, 64);
    _tile_stored(2, c + 512, 64);
    _tile_stored(3, c + 768, 64);
  }
  // A step's two A tiles (a) and two B tiles (b) into tiles 4, 5 and 6, 7.
  TAIYI_TARGET_AMX static void load_operands(const uint16_t* a, const uint16_t* b) {
    _tile_loadd(4, a, 64);
    _tile_loadd(6, b, 64);
    _tile_loadd(5, a + kTile, 64);
    _tile_loadd(7, b + kTile, 64);
  }

  // prefetchw (for a write) or prefetcht0 of p's line, as asm: GCC 12 dropped __builtin_prefetch
  // there (inlined into the OpenMP region, under a bounds check of the row).
  // (level 1: prefetcht1, into L2)
  static void prefetch_line(const char* p, bool write, int level) {
    if (write) {
      asm volatile("prefetchw %0" : : "m"(*p));
    } else if (level == 0) {
      asm volatile("prefetcht0 %0" : : "m"(*p));
    } else {
      asm volatile("prefetcht1 %0" : : "m"(*p));
    }
  }

  // Rows i and i + 1 of the block whose epilogue runs next (its output, and residual), requested
  // while its products run: the rows are N apart, where the hardware prefetchers do not follow, and
  // the epilogue's residual loads waited on memory (40% of the whole-K kernel's samples, perf).
  TAIYI_TARGET_AMX void prefetch_rows(const Pending& pd, int64_t i, const void* residual, void* out) const {
    const int64_t bytes = dst_ == DType::BF16 ? 2 : 4, rbytes = residual_dtype_ == DType::BF16 ? 2 : 4;
    const bool other = residual_ && residual != out;
    for (int64_t r = i; r < i + 2; ++r) {
      const int64_t at = std::min(pd.row0 + r, m_ - 1) * n_ + pd.col0;  // (rows past M: the last again)
      const char* o = static_cast<const char*>(out) + at * bytes;
      if (tiled_out_) {
        for (int64_t q = 0; q < pd.panels; ++q)
          prefetch_line(static_cast<const char*>(out) + tiled_offset(pd.row0 + r, pd.col0 + q * 32) * 2, true, 0);
      } else {
        for (int64_t l = 0; l < pd.panels * bytes / 2; ++l) prefetch_line(o + l * 64, true, 0);
      }
      if (!other) continue;
      const char* q = static_cast<const char*>(residual) + at * rbytes;
      for (int64_t l = 0; l < pd.panels * rbytes / 2; ++l) prefetch_line(q + l * 64, false, 0);
    }
  }

  // Where element (row, col) of the output lies in the tiled order (write_tiles): 32 x 32 blocks of
  // 2 KiB, row blocks outer, each as two A tiles of 16 rows x 32 columns (pack_rows' order).
  int64_t tiled_offset(int64_t row, int64_t col) const {
    return (row / 32 * (n_ / 32) + col / 32) * 1024 + row % 32 * 32 + col % 32;
  }

  // Row i (< 32) of a stored C block into out (rows past M skipped): its 32 columns + bias (+
  // residual, which may be the output's own memory), f32 or rounded to bf16 (nearest even).
  TAIYI_TARGET_AMX void epilogue_row(const Pending& pd, int64_t i, const void* residual, void* out) const {
    const int64_t row = pd.row0 + i;
    if (row >= m_) return;
    for (int64_t q = 0; q < pd.panels; ++q) epilogue_part(pd.c + q * 1024, row, i, pd.col0 + q * 32, residual, out);
  }
  // Row i of one C block (columns col0 to col0 + 31) into output row `row`.
  TAIYI_TARGET_AMX void epilogue_part(const float* c, int64_t row, int64_t i, int64_t col0, const void* residual,
                                      void* out) const {
    const float* t = c + (i / 16 * 2) * 256 + i % 16 * 16;
    __m512 v0 = _mm512_load_ps(t), v1 = _mm512_load_ps(t + 256);
    if (bias_ptr_) {
      const float* b = bias_ptr_ + col0;
      v0 = _mm512_add_ps(v0, _mm512_loadu_ps(b));
      v1 = _mm512_add_ps(v1, _mm512_loadu_ps(b + 16));
    }
    if (gelu_) {
      v0 = gelu16(v0);
      v1 = gelu16(v1);
    }
    const int64_t at = row * n_ + col0;
    if (residual_) {
      if (residual_dtype_ == DType::BF16) {
        const uint16_t* r = static_cast<const uint16_t*>(residual) + at;
        v0 = _mm512_add_ps(v0, load_bf16x16(r));
        v1 = _mm512_add_ps(v1, load_bf16x16(r + 16));
      } else {
        const float* r = static_cast<const float*>(residual) + at;
        v0 = _mm512_add_ps(v0, _mm512_loadu_ps(r));
        v1 = _mm512_add_ps(v1, _mm512_loadu_ps(r + 16));
      }
    }
    if (dst_ == DType::BF16) {
      _mm512_storeu_si512(static_cast<uint16_t*>(out) + (tiled_out_ ? tiled_offset(row, col0) : at),
                          (__m512i)_mm512_cvtne2ps_pbh(v1, v0));
    } else {
      _mm512_storeu_ps(static_cast<float*>(out) + at, v0);
      _mm512_storeu_ps(static_cast<float*>(out) + at + 16, v1);
    }
  }

  // rows (<= a strip) rows of x (row stride K), `steps` steps of 32 columns from x, into A tiles
  // [32-row block][step (of `stride` a block)][half][16 rows][32 k]; rows past `rows` zero (their
  // outputs are not written).
  TAIYI_TARGET_AMX void pack_rows(const uint16_t* x, int64_t rows, int64_t steps, int64_t stride, uint16_t* a) const {
    for (int64_t h = 0; h < (rows + 31) / 32 * 2; ++h)
      for (int64_t s = 0; s < steps; ++s) {
        uint16_t* tile = a + ((h / 2 * stride + s) * 2 + h % 2) * kTile;
        const uint16_t* src = x + h * 16 * k_ + s * 32;
        if (h * 16 + 16 <= rows) {
          _tile_loadd(4, src, k_ * 2);
          _tile_stored(4, tile, 64);
          continue;
        }
        for (int64_t r = 0; r < 16; ++r)
          _mm512_store_si512(tile + r * 32,
                             h * 16 + r < rows ? _mm512_loadu_si512(src + r * k_) : _mm512_setzero_si512());
      }
  }

  // C block (32 rows x 32 columns, tiles t0-t3 = rows 0-15 / 16-31 x columns 0-15 / 16-31, stored
  // as four 1 KiB tiles at c) over K block kb: a is the block's steps of 2 A tiles. Each operand
  // tile is loaded again right after its last product of the step, so the next step's loads
  // overlap this step's products: tiles have no renaming, and loading all four first made every
  // load wait for the products before it (the same loop with every operand in L1: 2.8 -> 5.0
  // TFLOP/s on 2 threads). Where `loaded`, tiles 4-7 hold the first step already; the last step
  // loads the next block's first (na, nbp) unless na is null.
  TAIYI_TARGET_AMX void block(const uint16_t* a, int64_t kb, int64_t nb, float* c, bool loaded, const uint16_t* na,
                              const uint16_t* nbp, BPrefetch& pf, Pending& pending, const void* residual,
                              void* out) const {
    start_c(kb == 0 ? nullptr : c);
    const uint16_t* b = packed_ptr_ + nb * k_ * 32 + kb * kSteps * 2 * kTile;
    const int64_t n = steps(kb);
    if (!loaded) load_operands(a, b);
    const int64_t per_step = (32 + n - 1) / n;
    int64_t done = 0;
    for (int64_t s = 0; s < n; ++s) {
      amx_step_2x2(s + 1 < n ? a + (s + 1) * 2 * kTile : na, s + 1 < n ? b + (s + 1) * 2 * kTile : nbp);
      pf.issue();
      if (pending.c)
        for (int64_t u = 0; u < per_step && done < 32; ++u) epilogue_row(pending, done++, residual, out);
    }
    if (pending.c)
      while (done < 32) epilogue_row(pending, done++, residual, out);
    pending.c = nullptr;
    store_c(c);
  }

  int64_t k_, n_, m_, kblocks_;
  // whole-K mode: threads take units from the others' ends (TAIYI_AMX_LINEAR_STEAL=0: not, for A/B runs)
  bool steal_ = !(std::getenv("TAIYI_AMX_LINEAR_STEAL") && std::string(std::getenv("TAIYI_AMX_LINEAR_STEAL")) == "0");
  bool whole_k_;                             // K < kMinK: A tiles of all of K per strip (run_whole_k)
  int64_t strip_ = kStrip, chunk_ = kChunk;  // rows per strip, columns per chunk (set for the whole-K mode)
  int64_t bsteps_ = 0;                       // whole-K mode: steps per K block (the last may have fewer)
  int64_t group_ = 1;                        // whole-K mode: panels summed together, K block by K block
  bool gelu_;                                // the exact GELU after the bias (BERT's intermediate dense)
  float ln_eps_;                             // > 0: a LayerNorm over each row after the residual (BERT's post-LN)
  Tensor ln_gamma_, ln_beta_;
  bool residual_;
  DType residual_dtype_, dst_;
  mutable bool tiled_out_ = false, tiled_in_ = false;  // write_tiles, read_tiles
  int threads_;
  Tensor packed_, bias_;
  const uint16_t* packed_ptr_ = nullptr;  // packed_'s and bias_'s data (the epilogue reads them per row)
  const float* bias_ptr_ = nullptr;
  size_t a_bytes_ = 0, acc_bytes_ = 0;
  std::string describe_;
};
#endif

// What the kernel computes: x bf16 rows [M, K] with K a multiple of 32, an f32 weight [N, K] with N a
// multiple of 32, an f32 bias of N or none, no scale, no post-op or a gelu (with no residual), f32 or
// bf16 residual and output.
bool kernel_fits(const Shape& x_shape, const Tensor& w, const Tensor& bias, const Epilogue& epilogue, DType dst) {
  if (x_shape.empty() || w.ndim() != 2 || w.dtype() != DType::F32 || w.size(1) != x_shape.back()) return false;
  if (bias.defined() && (bias.dtype() != DType::F32 || bias.numel() != w.size(0))) return false;
  const int64_t k = x_shape.back(), n = w.size(0);
  const bool post_op = epilogue.post_op == PostOp::kNone || (epilogue.post_op == PostOp::kGelu && !epilogue.residual);
  const bool layer_norm = !(epilogue.layer_norm_eps > 0) ||
                          (dst == DType::BF16 && epilogue.post_op == PostOp::kNone &&
                           (!epilogue.layer_norm_gamma.defined() || epilogue.layer_norm_gamma.numel() == w.size(0)) &&
                           (!epilogue.layer_norm_beta.defined() || epilogue.layer_norm_beta.numel() == w.size(0)));
  return k >= 32 && k % 32 == 0 && n % 32 == 0 && n > 0 && post_op && layer_norm && epilogue.scale == 1.0f &&
         (dst == DType::F32 || dst == DType::BF16) &&
         (!epilogue.residual || epilogue.residual_dtype == DType::F32 || epilogue.residual_dtype == DType::BF16);
}

}  // namespace

bool linear_bf16_amx_applicable(const Shape& x_shape, const Tensor& w, const Tensor& bias, DType compute,
                                const Epilogue& epilogue, DType src, DType dst, bool src_columns) {
  // (from 64 rows: fewer are a matrix-vector product, oneDNN's; from K = kMinK: see the top)
  return cpu_has_amx_bf16() && compute == DType::BF16 && src == DType::BF16 && !src_columns &&
         kernel_fits(x_shape, w, bias, epilogue, dst) && shape_numel(x_shape) / x_shape.back() >= 64;
}

bool linear_bf16_amx_whole_k(const Shape& x_shape) { return !x_shape.empty() && x_shape.back() < kMinK; }

int64_t work_stealing_stall_for_tests(int thread, int microseconds) {
  work_units_testing::stall_thread.store(thread);
  work_units_testing::stall_us.store(microseconds);
  return work_units_testing::taken.exchange(0);
}

std::unique_ptr<PreparedOp> prepare_linear_bf16_amx(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                    const Epilogue& epilogue, DType dst) {
#if defined(__x86_64__)
  if (!cpu_has_amx_bf16() || !kernel_fits(x_shape, w, bias, epilogue, dst))
    throw Error("linear (amx): not applicable to input " + shape_str(x_shape) + ", weight " + w.describe() +
                " (needs AMX, K and N multiples of 32, an f32 bias of N or none, no post-op but a gelu)");
  return std::make_unique<LinearBf16Amx>(x_shape, w, bias, epilogue, dst);
#else
  throw Error("linear (amx): needs an x86 CPU with AMX, for input " + shape_str(x_shape) + ", weight " + w.describe());
#endif
}

}  // namespace taiyi::ops::cpu
