// Checks an output path before any work, so a bad path fails fast and leaves nothing behind.
#pragma once

#include <string>

namespace taiyi::cli {

// Throws "<flag> <path>: directory ... does not exist" (or is not writable, or path is a directory).
void check_writable(const std::string& path, const char* flag);

}  // namespace taiyi::cli
