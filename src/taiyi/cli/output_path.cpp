#include "taiyi/cli/output_path.h"

#include <unistd.h>

#include <filesystem>

#include "taiyi/tensor/tensor.h"

namespace taiyi::cli {

void check_writable(const std::string& path, const char* flag) {
  namespace fs = std::filesystem;
  const fs::path parent = fs::absolute(fs::path(path)).parent_path();
  if (!fs::is_directory(parent))
    throw Error(std::string(flag) + " " + path + ": directory " + parent.string() + " does not exist");
  if (::access(parent.c_str(), W_OK) != 0)
    throw Error(std::string(flag) + " " + path + ": directory " + parent.string() + " is not writable");
  if (fs::is_directory(path)) throw Error(std::string(flag) + " " + path + ": is a directory");
}

}  // namespace taiyi::cli
