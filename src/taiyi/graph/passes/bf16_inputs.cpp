// bf16 inputs of bf16 products: with --dtype bf16, every prepared linear and oneDNN convolution
// rounds its f32 input to bf16 before the product, one more pass over memory per op (and three
// over the same LayerNorm output for q, k and v). Where a value is read only by such ops (as their
// input, not a residual or a multiply post-op's factor) and its producer can round as it writes,
// this pass makes the value bf16:
//   - read by linears bound in bf16: written by a LayerNorm, by a prepared linear (the
//     feed-forward's gated value), or by an attention whose bf16 kernel writes bf16 (the AMX and
//     AVX512-BF16 kernels);
//   - read by convolutions that take a bf16 input (ops::conv2d_takes_bf16_input: oneDNN's kernel)
//     from channels-last memory: written by a GroupNorm(+SiLU) or a nearest upsample (the
//     upsamplers' convolutions) over channels-last memory, or by such a linear (the transformer's
//     last feed-forward, with its residual, read by proj_out through a reshape and a permute);
//   - read by GroupNorms(+SiLU) over channels-last memory, which widen bf16 as they read it:
//     written by a oneDNN convolution that can round as it stores (ops::conv2d_writes_bf16: a
//     ResNet's first convolution, read only by its norm2). Unlike the cases above this adds a
//     rounding (the GroupNorm's input; PyTorch's bf16 has it too), and halves the bytes written
//     and read twice (the GroupNorm's two passes): TAIYI_BF16_CONV_OUT=0 turns it off;
//   - read by such convolutions and GroupNorms: written by a concat of f32 inputs along the
//     channels (an up block's skip concat, read by norm1 and the 1x1 shortcut: the convolution
//     rounded it anyway; the GroupNorm's input gets the rounding above), or by such a convolution
//     (a down- or upsampler's, read by the next block's norm1 and 1x1 shortcut);
//   - the transformer's residual stream (bf16_residual_stream below): read by LayerNorms and as the
//     residual of linears that write bf16, written by a linear that writes bf16 or by proj_in. This
//     rounds each residual sum to bf16 (as PyTorch's bf16 does) and halves the bytes of the
//     stream: TAIYI_BF16_STREAM=0 turns it off;
//   - the VAE's spatial residual stream (bf16_spatial_stream below): a ResNet's output (or the
//     mid-block attention's, or conv_in's), read by GroupNorms, as the input of convolutions that
//     take bf16 (a 1x1 shortcut) or of a nearest upsample that writes bf16, and as the residual of
//     convolutions and linears that add a bf16 residual; written by a convolution that can round
//     as it stores (with its residual added first) or a linear that writes bf16. This rounds each
//     residual sum to bf16 (as PyTorch's bf16 does) and halves the bytes of the stream, written
//     once and read three times: TAIYI_BF16_STREAM=0 turns it off with the transformer's;
//   - read as q, k or v by attentions whose bf16 kernel reads bf16 (the AMX kernel: it packs them
//     to bf16 tiles anyway): written by a prepared linear (the stacked q, k, v projection, the
//     cross-attention's q, the context's k and v).
// Readers are looked for through reshapes, permutes and slices, which become bf16 views.
// Except for the GroupNorms' inputs and the residual stream, the rounding is the same one (nearest
// even), so the graph computes what it did before: exactly, but for the SiLU of a GroupNorm that
// writes bf16, computed with a coarser fit (ops/cpu/norm_f32.cpp: a few percent of its roundings
// move by one bf16 step).
// Needs bf16 the CPU runs (not the f32 fallback or its emulation). TAIYI_BF16_INPUTS=0 turns the
// pass off (A/B runs).

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/op_call.h"

namespace taiyi::graph {

namespace {

// Whether node n reads value v only as its input (not also as weights, bias, residual or factor).
bool reads_only_as_input(const Node& n, int v) {
  if (n.inputs.empty() || n.inputs[0] != v) return false;
  for (size_t i = 1; i < n.inputs.size(); ++i)
    if (n.inputs[i] == v) return false;
  return true;
}

// A linear prepack_weights will bind in bf16, a convolution whose prepared kernel reads bf16, an
// attention whose bf16 kernel reads q, k, v in bf16, or a channels-last GroupNorm(+SiLU).
bool bf16_product_reads(const Graph& g, const Node& n, int v, const CompileOptions& options) {
  if (n.kind == ops::OpKind::kAttention) {
    // (the attention's binding is checked with its inputs' dtypes as they are now: f32)
    return bf16_attention_binds(g, n) && attention_reads_bf16(n, g.values[v]);
  }
  if (n.kind == ops::OpKind::kGroupNorm || n.kind == ops::OpKind::kGroupNormSilu)
    return reads_only_as_input(n, v) && value_layout(g.values[v]) == ops::Layout::kNHWC;
  if (!reads_only_as_input(n, v) || !will_prepack(g, n)) return false;
  if (n.kind == ops::OpKind::kLinear) return true;
  const Value& x = g.values[v];
  return n.kind == ops::OpKind::kConv2d && value_layout(x) == ops::Layout::kNHWC &&
         ops::conv2d_takes_bf16_input(x.shape, g.values[n.inputs[1]].constant, n.attrs.conv, options.compute,
                                      value_layout(x), value_layout(g.values[n.output]), node_epilogue(g, n));
}

// A linear bound in bf16: oneDNN rounds its output (after the epilogue: a residual added, a gelu
// or a product, in f32) as it stores it.
bool linear_writes_bf16(const Graph& g, const Node& n) {
  return n.kind == ops::OpKind::kLinear && will_prepack(g, n) && n.attrs.output_scale == 1.0f;
}

// A convolution prepack_weights will bind to a kernel that rounds its output to bf16 as it stores it.
// With residual_bf16, as if its residual (if any) were bf16 (the spatial stream decides both).
bool conv_writes_bf16(const Graph& g, const Node& n, bool residual_bf16 = false) {
  if (n.kind != ops::OpKind::kConv2d || !will_prepack(g, n)) return false;
  const Value& x = g.values[n.inputs[0]];
  ops::Epilogue e = node_epilogue(g, n);
  if (e.residual && residual_bf16) e.residual_dtype = DType::BF16;
  return ops::conv2d_writes_bf16(x.shape, g.values[n.inputs[1]].constant, n.attrs.conv, DType::BF16, value_layout(x),
                                 value_layout(g.values[n.output]), e, x.dtype);
}

// Node n reads v (or a view of it) as its residual (a prepared conv2d's or linear's fused one).
bool reads_as_residual(const Graph& g, const Node& n, int v) {
  if ((n.kind != ops::OpKind::kConv2d && n.kind != ops::OpKind::kLinear) || !will_prepack(g, n) ||
      !ops::has_fused_residual(n.attrs, n.inputs) || n.inputs[3] != v)
    return false;
  for (size_t i = 0; i < 3; ++i)
    if (n.inputs[i] == v) return false;
  return true;
}

// A concat of f32 inputs along the channels into channels-last memory, which rounds them as it
// copies (ops::concat).
bool channels_last_concat(const Graph& g, const Node& n) {
  if (n.kind != ops::OpKind::kConcat || n.attrs.dim != 1 || value_layout(g.values[n.output]) != ops::Layout::kNHWC)
    return false;
  for (int x : n.inputs)
    if (g.values[x].dtype != DType::F32) return false;
  return true;
}

// Whether the producer can write v in bf16 for readers of this kind (linears, convolutions,
// attentions or GroupNorms).
bool writes_bf16(const Graph& g, const Node& n, ops::OpKind readers) {
  if (linear_writes_bf16(g, n)) return true;
  if (readers == ops::OpKind::kAttention) return false;
  if (channels_last_concat(g, n)) return true;  // (for convolutions and GroupNorms)
  if (readers == ops::OpKind::kGroupNorm || readers == ops::OpKind::kGroupNormSilu) return conv_writes_bf16(g, n);
  if (readers == ops::OpKind::kConv2d && conv_writes_bf16(g, n)) return true;  // (with GroupNorms: bf16_inputs)
  if (readers == ops::OpKind::kLinear) {
    if (n.kind == ops::OpKind::kLayerNorm) return true;
    // (bf16_attention binds it to a kernel that writes bf16)
    return n.kind == ops::OpKind::kAttention && bf16_attention_binds(g, n) &&
           ops::attention_bf16_writes_bf16(n.attrs.scale);
  }
  return (n.kind == ops::OpKind::kGroupNorm || n.kind == ops::OpKind::kGroupNormSilu ||
          n.kind == ops::OpKind::kUpsampleNearest) &&
         value_layout(g.values[n.output]) == ops::Layout::kNHWC &&
         value_layout(g.values[n.inputs[0]]) == ops::Layout::kNHWC;
}

// The nodes that read v, looking through reshapes, permutes and slices (views: the transformer's
// output [B, H W, C] seen as the [B, C, H, W] channels-last input of proj_out; q, k and v, slices of
// one stacked linear's output): each with the value it reads. The views passed are listed in `views`. False if a view
// is a graph output.
bool readers_through_views(const Graph& g, int v, const std::vector<std::vector<int>>& readers,
                           std::vector<std::pair<int, int>>& reads, std::vector<int>& views) {
  for (int r : readers[v]) {
    const Node& n = g.nodes[r];
    if (n.kind == ops::OpKind::kReshape || n.kind == ops::OpKind::kPermute || n.kind == ops::OpKind::kSlice) {
      if (g.is_output(n.output) || readers[n.output].empty()) return false;
      views.push_back(n.output);
      if (!readers_through_views(g, n.output, readers, reads, views)) return false;
    } else {
      reads.emplace_back(r, v);
    }
  }
  return true;
}

// The transformer's residual stream (the hidden state between proj_in, its attentions' to_out and
// the feed-forward; BERT's between its LayerNorms, post-LN): a value read by LayerNorms (whose
// outputs are bf16: the pass above), as the residual of linears (into bf16 or f32) and as the input
// of linears bound in bf16, at least one of them a residual's reader or its producer a residual
// sum; written by a linear that writes bf16, a convolution that can (proj_in) or a LayerNorm
// (BERT's, read by the next q, k, v and as the residual of the attention's output dense). Decided
// from the last such value back, so that each reader's output is decided first.
bool residual_stream_reads(const Graph& g, const Node& n, int v, const CompileOptions& options) {
  if (n.kind == ops::OpKind::kLayerNorm) return n.inputs[0] == v && g.values[n.output].dtype == DType::BF16;
  if (n.kind != ops::OpKind::kLinear || !will_prepack(g, n)) return false;
  if (reads_only_as_input(n, v)) return bf16_product_reads(g, n, v, options);
  return reads_as_residual(g, n, v);  // (into a bf16 or an f32 output: oneDNN's binary post-op)
}

bool bf16_residual_stream(Graph& g, const CompileOptions& options) {
  if (pass_turned_off("TAIYI_BF16_STREAM")) return false;
  const auto readers = g.readers();
  bool changed = false;
  for (size_t v = g.values.size(); v-- > 0;) {
    const Node* producer = f32_value_producer(g, v, readers);
    if (!producer || !(linear_writes_bf16(g, *producer) || conv_writes_bf16(g, *producer) ||
                       producer->kind == ops::OpKind::kLayerNorm))
      continue;
    std::vector<std::pair<int, int>> reads;
    std::vector<int> views;
    if (!readers_through_views(g, static_cast<int>(v), readers, reads, views) || reads.empty()) continue;
    bool all = true;
    bool stream = producer->kind == ops::OpKind::kLinear && ops::has_fused_residual(producer->attrs, producer->inputs);
    for (const auto& [r, x] : reads) {
      all = all && residual_stream_reads(g, g.nodes[r], x, options);
      stream = stream || (g.nodes[r].kind == ops::OpKind::kLinear && !reads_only_as_input(g.nodes[r], x));
    }
    if (!all || !stream) continue;
    g.values[v].dtype = DType::BF16;
    for (int view : views) g.values[view].dtype = DType::BF16;
    changed = true;
  }
  return changed;
}

// A reader of the spatial residual stream (see the top), as far as node n alone says: n reads v
// (or a view of it) as the input of a channels-last GroupNorm(+SiLU), of a convolution that takes
// bf16, or of a channels-last nearest upsample whose output is bf16 (decided before, by the loop
// above); as the residual of a prepared linear (into its bf16 or f32 output), or of a convolution
// that can write bf16 with it (which bf16_spatial_stream then asks of its output).
bool spatial_stream_reads(const Graph& g, const Node& n, int v, const CompileOptions& options) {
  if (n.kind == ops::OpKind::kUpsampleNearest) {
    const Value &x = g.values[v], &y = g.values[n.output];
    return value_layout(x) == ops::Layout::kNHWC && value_layout(y) == ops::Layout::kNHWC && y.dtype == DType::BF16;
  }
  if (reads_only_as_input(n, v)) return n.kind != ops::OpKind::kLinear && bf16_product_reads(g, n, v, options);
  if (!reads_as_residual(g, n, v)) return false;
  return n.kind == ops::OpKind::kLinear || conv_writes_bf16(g, n, true);
}

// The spatial residual stream: the candidates (written by a convolution or linear that can write
// bf16, every reader one of spatial_stream_reads), less, until none is left to take out, those
// whose convolutions would mix dtypes: a producer adding a residual that stays f32, or a reader
// adding it into an output that stays f32. In a chain of ResNets this keeps all or none.
bool bf16_spatial_stream(Graph& g, const CompileOptions& options) {
  if (pass_turned_off("TAIYI_BF16_STREAM")) return false;
  const auto readers = g.readers();
  std::vector<bool> in(g.values.size(), false);
  std::vector<std::vector<int>> views(g.values.size());
  std::vector<std::vector<std::pair<int, int>>> reads(g.values.size());
  for (size_t v = g.values.size(); v-- > 0;) {
    const Node* producer = f32_value_producer(g, v, readers);
    if (!producer || !(conv_writes_bf16(g, *producer, true) || linear_writes_bf16(g, *producer))) continue;
    if (!readers_through_views(g, static_cast<int>(v), readers, reads[v], views[v]) || reads[v].empty()) continue;
    bool all = true;
    for (const auto& [r, x] : reads[v]) all = all && spatial_stream_reads(g, g.nodes[r], x, options);
    in[v] = all;
  }
  // Whether value w (a residual or an output) is or will be bf16.
  const auto bf16 = [&](int w) { return g.values[w].dtype == DType::BF16 || in[static_cast<size_t>(w)]; };
  // A view's base value (views of a stream value are bf16 with it).
  std::vector<int> base_of(g.values.size(), -1);
  for (size_t v = 0; v < g.values.size(); ++v)
    for (int view : views[v]) base_of[view] = static_cast<int>(v);
  const auto base = [&](int w) { return base_of[w] >= 0 ? base_of[w] : w; };
  for (bool again = true; again;) {
    again = false;
    for (size_t v = 0; v < g.values.size(); ++v) {
      if (!in[v]) continue;
      const Node& p = g.nodes[g.values[v].producer];
      bool keep =
          !(p.kind == ops::OpKind::kConv2d && ops::has_fused_residual(p.attrs, p.inputs) && !bf16(base(p.inputs[3])));
      for (const auto& [r, x] : reads[v]) {
        const Node& n = g.nodes[r];
        keep = keep && !(n.kind == ops::OpKind::kConv2d && reads_as_residual(g, n, x) && !bf16(n.output));
      }
      if (!keep) {
        in[v] = false;
        again = true;
      }
    }
  }
  bool changed = false;
  for (size_t v = 0; v < g.values.size(); ++v) {
    if (!in[v]) continue;
    g.values[v].dtype = DType::BF16;
    for (int view : views[v]) g.values[view].dtype = DType::BF16;
    changed = true;
  }
  return changed;
}

}  // namespace

bool bf16_inputs(Graph& g, const CompileOptions& options) {
  if (pass_turned_off("TAIYI_BF16_INPUTS")) return false;
  if (prepared_compute(options) != DType::BF16) return false;
  const auto readers = g.readers();
  bool changed = false;
  for (size_t v = 0; v < g.values.size(); ++v) {
    const Node* producer = f32_value_producer(g, v, readers);
    if (!producer) continue;
    // Every reader (through views) one that takes bf16, all of one kind (linears, convolutions,
    // attentions or GroupNorms) or convolutions and GroupNorms.
    std::vector<std::pair<int, int>> reads;
    std::vector<int> views;
    if (!readers_through_views(g, static_cast<int>(v), readers, reads, views) || reads.empty()) continue;
    bool all = true;
    for (const auto& [r, x] : reads) {
      const ops::OpKind kind = g.nodes[r].kind;
      // One kind of reader, or convolutions and GroupNorms (an up block's concat: norm1 and the
      // 1x1 shortcut).
      const bool mixes = kind != g.nodes[reads[0].first].kind;
      const auto spatial = [](ops::OpKind k) {
        return k == ops::OpKind::kConv2d || k == ops::OpKind::kGroupNorm || k == ops::OpKind::kGroupNormSilu;
      };
      all = all && (!mixes || (spatial(kind) && spatial(g.nodes[reads[0].first].kind))) &&
            bf16_product_reads(g, g.nodes[r], x, options) && writes_bf16(g, *producer, kind);
    }
    if (!all) continue;
    g.values[v].dtype = DType::BF16;
    for (int view : views) g.values[view].dtype = DType::BF16;
    changed = true;
  }
  const bool stream = bf16_residual_stream(g, options);
  return bf16_spatial_stream(g, options) || stream || changed;
}

const Node* f32_value_producer(const Graph& g, size_t v, const std::vector<std::vector<int>>& readers) {
  const Value& x = g.values[v];
  if (x.kind != ValueKind::kNode || x.dtype != DType::F32 || g.is_output(static_cast<int>(v)) || !is_dense(x) ||
      readers[v].empty() || x.producer < 0 || g.nodes[x.producer].output != static_cast<int>(v))
    return nullptr;
  return &g.nodes[x.producer];
}

}  // namespace taiyi::graph
