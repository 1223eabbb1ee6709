// Global oneDNN engine and per-thread streams (see dnnl_context.h).
#include "taiyi/ops/cpu/dnnl_context.h"

namespace taiyi::ops::cpu {

const dnnl::engine& dnnl_cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& dnnl_cpu_stream() {
  thread_local dnnl::stream stream(dnnl_cpu_engine());
  return stream;
}

}  // namespace taiyi::ops::cpu
