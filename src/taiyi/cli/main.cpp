// taiyi: a Stable Diffusion (Taiyi, SD 1.x) inference engine. See README.md.
#include <cstdio>
#include <exception>
#include <string>

#include "taiyi/cli/commands.h"
#include "taiyi/tensor/tensor.h"

int main(int argc, char** argv) {
  CLI::App app{"taiyi: fast Stable Diffusion (Taiyi, SD 1.x) inference on CPU"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "taiyi 0.1.0");
  taiyi::cli::add_txt2img_command(app);
  taiyi::cli::add_eval_command(app);
  taiyi::cli::add_bench_command(app);
  taiyi::cli::add_model_commands(app);
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const CLI::App* sub : app.get_subcommands({})) {
      known = known || sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "taiyi: error: unknown command '%s' (commands: %s)\n", argv[1], names.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const taiyi::Error& e) {
    std::fprintf(stderr, "taiyi: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "taiyi: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "taiyi: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
