// What the machine is, for benchmark reports: CPU model and the instruction set
// oneDNN dispatches to (it differs between the machines we run on: AVX2,
// AVX-512 with bf16, AMX).
#pragma once

#include <string>

namespace taiyi::ops {

std::string cpu_model_name();  // from /proc/cpuinfo, e.g. "AMD EPYC 9R14"
std::string onednn_isa();      // e.g. "avx2", "avx512_core_bf16", "avx512_core_amx"
std::string onednn_version();  // e.g. "2.6.3"

}  // namespace taiyi::ops
