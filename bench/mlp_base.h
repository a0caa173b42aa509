// The Fashion-MNIST MLP base the adapter benchmarks start from: pretrained
// with the default recipe for `epochs`, saved to a temporary checkpoint.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "bench/common.h"
#include "launch/config.h"
#include "runtime/train/trainer.h"

namespace tessera::bench {

// Returns the checkpoint path (the caller removes it); emits the base's test accuracy.
inline std::string pretrain_mlp_base(int epochs, int threads, const std::string& bench) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            (bench + "_base_" + std::to_string(getpid()) + ".safetensors"))
                               .string();
  train::Trainer base(launch::resolve_config(
      "", {"epochs=" + std::to_string(epochs), "threads=" + std::to_string(threads), "out_dir="},
      "mlp"));
  base.run();
  emit({{"bench", bench},
        {"impl", "tessera"},
        {"phase", "base"},
        {"test_accuracy", base.evaluate().accuracy}});
  base.save_checkpoint(path);
  return path;
}

}  // namespace tessera::bench
