// The one oneDNN CPU engine and the stream the eager ops execute on.
//
// oneDNN (Debian's libdnnl 2.6) is built with the OpenMP runtime, so its primitives
// share the OpenMP thread pool our own kernels use; set_num_threads() sizes both.
#pragma once

#include <dnnl.hpp>

namespace taiyi::ops::cpu {

const dnnl::engine& dnnl_cpu_engine();
// Per-thread stream: a dnnl::stream must not be used by two threads at once.
dnnl::stream& dnnl_cpu_stream();

// Whether oneDNN dispatches AMX here (Intel Sapphire Rapids and later, unless ONEDNN_MAX_CPU_ISA caps
// it): there its bf16 tile kernels beat our AVX512-BF16 kernels, which are for CPUs without AMX.
inline bool dnnl_uses_amx() { return dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core_amx; }

// A oneDNN memory object over an existing buffer (no copy). oneDNN takes a non-const
// handle even for inputs; it does not write to them.
inline dnnl::memory dnnl_wrap(const dnnl::memory::desc& md, const void* p) {
  return dnnl::memory(md, dnnl_cpu_engine(), const_cast<void*>(p));
}

}  // namespace taiyi::ops::cpu
