// Runs the built `taiyi` binary with arguments (no shell interpretation of them) and
// captures its exit status, stdout and stderr.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace taiyi::testing {

struct RunResult {
  int rc = -1;
  std::string out, err;
};

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q.append("'\\''");
    else q.push_back(c);
  }
  q.push_back('\'');
  return q;
}

// `env`: "NAME=value" settings for this run only.
inline RunResult run_taiyi(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  TempDir tmp("run");
  std::string cmd;
  for (const auto& e : env) cmd.append(shell_quote(e)).append(" ");
  if (!env.empty()) cmd = "env " + cmd;
  cmd.append(shell_quote(TAIYI_BINARY));
  for (const auto& a : args) cmd.append(" ").append(shell_quote(a));
  cmd.append(" >").append(shell_quote(tmp / "out")).append(" 2>").append(shell_quote(tmp / "err"));
  RunResult r;
  const int status = std::system(cmd.c_str());
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto slurp = [](const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  r.out = slurp(tmp / "out");
  r.err = slurp(tmp / "err");
  return r;
}

}  // namespace taiyi::testing
