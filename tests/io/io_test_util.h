// Shared helpers of the io tests: fixture paths, a scratch directory, error-message checks.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "taiyi/tensor/tensor.h"

namespace taiyi::io::test {

inline std::string fixture(const std::string& rel) { return std::string(TAIYI_FIXTURES) + "/" + rel; }
inline std::string io_fixture(const std::string& name) { return fixture("io/" + name); }

inline std::vector<char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

inline void write_bytes(const std::string& path, const char* data, size_t n) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data, static_cast<std::streamsize>(n));
  ASSERT_TRUE(f.good()) << path;
}
inline void write_bytes(const std::string& path, const std::vector<char>& data) {
  write_bytes(path, data.data(), data.size());
}

// A fresh directory per test, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    // The fuzz tests write thousands of small files: prefer memory-backed /dev/shm unless TMPDIR says otherwise.
    std::filesystem::path base = std::filesystem::temp_directory_path();
    if (!std::getenv("TMPDIR") && ::access("/dev/shm", W_OK) == 0) base = "/dev/shm";
    dir_ = base / ("taiyi_io_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  ~ScratchDir() { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

// Runs f, which must throw taiyi::Error; returns its message ("" and a test failure otherwise).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-taiyi exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no taiyi::Error was thrown";
  return "";
}

inline ::testing::AssertionResult contains_all(const std::string& msg, std::initializer_list<std::string> parts) {
  for (const auto& p : parts)
    if (msg.find(p) == std::string::npos)
      return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << p << "\"";
  return ::testing::AssertionSuccess();
}

inline DType dtype_from_name(const std::string& s) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "I64") return DType::I64;
  if (s == "I32") return DType::I32;
  if (s == "U8") return DType::U8;
  throw Error("unknown dtype name in test manifest: " + s);
}

// Logical (row-major) bytes of a tensor, whatever its strides.
inline std::vector<std::byte> logical_bytes(const Tensor& t) {
  const Tensor c = t.contiguous();
  const auto* p = static_cast<const std::byte*>(c.raw_data());
  return std::vector<std::byte>(p, p + c.nbytes());
}

}  // namespace taiyi::io::test
