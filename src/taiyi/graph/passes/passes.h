// The graph compiler's passes, in the order they run. Each pass is one file of
// this folder with the same small interface (a name and a function that rewrites
// the graph and says whether it changed anything) and an equivalence test (the
// graph computes the same before and after, tests/graph/).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "taiyi/graph/graph.h"

namespace taiyi::graph {

// What the caller asks of the compiled graph.
struct CompileOptions {
  // Precision of convolutions, linears and attention's products: f32, or bf16 products (f32
  // accumulation, f32 activations between ops). bf16 where the CPU cannot run it falls back to f32.
  DType compute = DType::F32;
  // Positions of inputs that usually repeat from one call to the next (the UNet's text context
  // during sampling). The executor keeps what is computed from them and constants alone (the
  // cross-attention K and V projections) and reruns it only when such an input's content changes.
  std::vector<int> repeated_inputs;
};

struct Pass {
  const char* name;
  bool (*run)(Graph& g, const CompileOptions& options);
};

// Removes nodes whose outputs no graph output depends on.
bool dead_value_elimination(Graph& g, const CompileOptions& options = {});

// Channels-last around the transformer blocks: a convolution whose output is only permuted to
// [B, H, W, C] writes NHWC memory (the permute and the flattening reshape become views), and a
// convolution reading a channels-last view reads it directly (the copy to NCHW goes).
bool channels_last_transformers(Graph& g, const CompileOptions& options = {});

// group_norm read only by a silu -> one group_norm_silu node.
bool fuse_group_norm_silu(Graph& g, const CompileOptions& options = {});

// add(conv2d or linear, residual) [-> scale] -> the op with a residual epilogue (4th input) and
// attrs.output_scale, for ops prepack_weights will bind.
bool fuse_residual_add(Graph& g, const CompileOptions& options = {});

// For the passes that fold an add into the op before it (fuse_residual_add, fuse_bias_add): the
// node producing the add's operand op_out when only that add reads it (not a graph output, not
// the add's other operand, not removed), else -1; and the fold itself: the producer moves to the
// add's place (its operand may be computed after it), `extra` appended to its inputs, writing the
// add's output. Returns the moved node.
int add_operand_producer(const Graph& g, const std::vector<std::vector<int>>& readers, const std::vector<bool>& removed,
                         int op_out, int other);
Node& fold_into_add(Graph& g, size_t add_index, int producer, int extra, std::vector<bool>& removed);

// For the passes that fold an op into the convolution reading its output (fuse_upsample_conv,
// fuse_group_norm_conv), with bf16 compute the CPU runs: for each conv2d prepack_weights will bind
// whose input is written by a node of `kind` that nothing else reads (and is no graph output),
// fold(conv, producer, compute) rewrites the convolution to read what the producer read, or says
// no; the producers of the folds made are removed. Returns whether any was.
bool fold_input_producers(Graph& g, const CompileOptions& options, ops::OpKind kind,
                          const std::function<bool(Node& conv, const Node& producer, DType compute)>& fold);

// add(conv2d(x), t) with t one value per output channel (the ResNet blocks' time embedding) -> the
// convolution with t added to its bias per call, where its prepared kernel takes that (oneDNN's).
bool fuse_bias_add(Graph& g, const CompileOptions& options = {});

// conv2d(upsample_nearest(x) to 2x) -> conv2d of x with Conv2dParams upsample 2 (four 2x2
// convolutions of summed taps), where ops::conv2d_fuses_upsample says so: bf16 on AMX.
bool fuse_upsample_conv(Graph& g, const CompileOptions& options = {});

// gelu(linear) -> the linear with a gelu post-op; geglu(linear) -> a gate linear (the weight's
// second half, post-op gelu) and a value linear (the first half) whose post-op multiplies by the
// gate. Only for linears prepack_weights will bind.
bool fuse_linear_gelu(Graph& g, const CompileOptions& options = {});

// Linears reading one input and feeding only attentions (q, k, v; the context's k and v) -> one
// linear over their stacked weights, each former output a slice view of its output. Only with
// bf16 the CPU runs, for linears prepack_weights will bind, with nothing fused into them.
bool fuse_sibling_linears(Graph& g, const CompileOptions& options = {});

// The 4-D activations between convolutions (norms, adds, channel concats, upsamples whose
// kernels take NHWC) laid out channels-last, where every producer and reader of a group of them
// can; graph inputs and outputs stay NCHW.
bool channels_last_activations(Graph& g, const CompileOptions& options = {});

// With bf16 compute the CPU runs: a value read only as the input of bf16 linears (written by a
// LayerNorm or a linear without a residual) or of oneDNN bf16 convolutions (written by a
// channels-last GroupNorm(+SiLU)) becomes bf16, rounded once as it is written instead of by every
// reader. The same rounding: the graph computes the same.
bool bf16_inputs(Graph& g, const CompileOptions& options = {});

// With bf16 compute the CPU runs: the GEGLU's gate (a gelu linear's output read only as the
// multiply factor of the value linear) is written and read in bf16. One more rounding: the graph
// computes within bf16's error of what it did (bf16_gate.cpp).
bool bf16_gate(Graph& g, const CompileOptions& options = {});

// With bf16 the CPU runs: a GEGLU left whole (fuse_linear_gelu, on AMX) reads its projection's
// output in bf16 through the prepared kernel (ops::prepare_geglu_bf16), and writes bf16 where only
// bf16 linears read it. One more rounding: within bf16's error of what it computed (bf16_geglu.cpp).
bool bf16_geglu(Graph& g, const CompileOptions& options = {});

// A value's memory layout: channels-last when its strides say so (and differ from NCHW's), else
// NCHW; and whether it is dense (row-major or channels-last).
ops::Layout value_layout(const Value& v);
bool is_dense(const Value& v);

// Whether the environment variable a pass names for A/B runs is set to "0" (the pass then
// changes nothing): TAIYI_CHANNELS_LAST, TAIYI_FUSE_GELU, TAIYI_FUSE_QKV, TAIYI_BF16_INPUTS, TAIYI_BF16_GATE.
// (TAIYI_GEGLU_KERNEL=0 keeps the GEGLU split on AMX: ops/prepared.h; TAIYI_DUMP_GRAPH=DIR writes each
// compiled graph: graph_function.cpp.)
bool pass_turned_off(const char* env_var);

// The epilogue the fusion passes put on a conv2d or linear (fused residual, output scale, post-op,
// and the dtype of a multiply post-op's factor), as prepack_weights binds it.
ops::Epilogue node_epilogue(const Graph& g, const Node& n);

// The node that writes value v when v is an f32 node output, dense, read by some node and not a
// graph output: a value bf16_inputs or bf16_gate may make bf16. Null otherwise.
const Node* f32_value_producer(const Graph& g, size_t v, const std::vector<std::vector<int>>& readers);

// Whether bf16_attention binds this node when bf16 runs (an attention with q, k, v of shapes the
// prepared kernels take, f32 or, where attention_reads_bf16, bf16).
bool bf16_attention_binds(const Graph& g, const Node& n);
// Whether attention node n's bf16 kernel reads its input x (q, k or v) in bf16 (the AMX kernel).
bool attention_reads_bf16(const Node& n, const Value& x);

// The precision prepack_weights binds products in: bf16 where asked and the CPU runs it, else f32.
DType prepared_compute(const CompileOptions& options);

// Whether prepack_weights will bind this node (a conv2d or linear with constant f32 weights and
// an input it can read).
bool will_prepack(const Graph& g, const Node& n);

// With bf16 the CPU runs: conv2d(group_norm_silu(x)), the normalised value read by nothing else ->
// the conv2d of x with a GroupNorm+SiLU prologue (ops::has_norm_prologue), where
// ops::conv2d_takes_group_norm_silu says so (the AMX Winograd kernel). Within bf16's error of what
// the graph computed (fuse_group_norm_conv.cpp).
bool fuse_group_norm_conv(Graph& g, const CompileOptions& options = {});

// With bf16 the CPU runs: layer_norm(linear(x) (+ residual)), the linear's bf16 output read by
// nothing else -> the linear with a LayerNorm epilogue (OpAttrs eps > 0; gamma and beta its 5th and
// 6th inputs), where ops::linear_takes_layer_norm_bf16 says so (our AMX linear). The same to the
// bit (fuse_linear_layer_norm.cpp).
bool fuse_linear_layer_norm(Graph& g, const CompileOptions& options = {});

// Binds each conv2d and linear with constant weights to a prepared oneDNN primitive whose
// weights are reordered (and converted, for bf16) once into its preferred layout.
bool prepack_weights(Graph& g, const CompileOptions& options = {});

// Whether TAIYI_BF16_EMULATE asks for bf16's arithmetic on f32 kernels where the CPU has no bf16
// (prepack_weights.cpp).
bool bf16_emulation_requested();

// With bf16 asked (and runnable, or emulated): binds each attention node to the prepared kernel
// whose matrix products run in bf16 (ops::prepare_attention_bf16). Its run() reads q, k and v.
bool bf16_attention(Graph& g, const CompileOptions& options = {});

// After prepack_weights: a convolution's GroupNorm prologue takes its statistics from the moments
// the prepared kernel that wrote its input sums as it writes (ops::ChannelMoments), where both can.
bool link_norm_moments(Graph& g, const CompileOptions& options = {});

// After prepack_weights: a bf16 AMX linear read only by another one in its K-block mode writes its
// output in the A tiles the reader takes in place (ops::PreparedOp::write_tiles / read_tiles).
bool link_linear_tiles(Graph& g, const CompileOptions& options = {});

// The pipeline, in order:
inline const std::vector<Pass>& default_passes() {
  static const std::vector<Pass> passes = {
      {"dead_value_elimination", dead_value_elimination},
      {"channels_last_transformers", channels_last_transformers},
      {"fuse_group_norm_silu", fuse_group_norm_silu},
      {"fuse_residual_add", fuse_residual_add},
      {"fuse_bias_add", fuse_bias_add},
      {"fuse_upsample_conv", fuse_upsample_conv},
      {"fuse_linear_gelu", fuse_linear_gelu},
      {"fuse_sibling_linears", fuse_sibling_linears},
      {"channels_last_activations", channels_last_activations},
      {"bf16_inputs", bf16_inputs},
      {"bf16_gate", bf16_gate},
      {"bf16_geglu", bf16_geglu},
      {"fuse_group_norm_conv", fuse_group_norm_conv},
      {"fuse_linear_layer_norm", fuse_linear_layer_norm},
      {"prepack_weights", prepack_weights},
      {"bf16_attention", bf16_attention},
      {"link_norm_moments", link_norm_moments},
      {"link_linear_tiles", link_linear_tiles},
  };
  return passes;
}

struct PassReport {
  std::string name;
  size_t nodes_before = 0, nodes_after = 0;
  double seconds = 0;
};

std::vector<PassReport> run_passes(Graph& g, const CompileOptions& options = {},
                                   const std::vector<Pass>& passes = default_passes());

}  // namespace taiyi::graph
