// The `taiyi` command line: each subcommand registers its flags on a CLI11 app
// and runs through a callback. Front end only: parse, call models, report.
#pragma once

#include <CLI/CLI.hpp>

namespace taiyi::cli {

void add_eval_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_txt2img_command(CLI::App& app);
void add_model_commands(CLI::App& app);  // tokenize, info

}  // namespace taiyi::cli
