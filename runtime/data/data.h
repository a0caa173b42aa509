// Data: the IDX (MNIST-format) reader for Fashion-MNIST, byte-level text and
// pre-tokenised corpora, and the seeded sampler that turns them into batches
// sharded by (rank, world size). Nothing here downloads anything.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/common/rng.h"
#include "runtime/tensor/tensor.h"

namespace tessera::data {

constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
constexpr const char* kFashionMnistPackage = "dataset-fashion-mnist";

// An IDX file: unsigned-byte data with its dims (gzip or plain; detected).
struct Idx {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};
Idx read_idx(const std::string& path);
Idx parse_idx(const std::vector<uint8_t>& bytes, const std::string& source);

// Images as float [N, rows*cols], standardised with the training set's pixel
// mean/std (Fashion-MNIST: 0.2860, 0.3530); labels 0..9.
struct ImageSet {
  Tensor images;
  std::vector<int32_t> labels;
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t features() const { return images.size(1); }
};
constexpr float kFashionMean = 0.2860f, kFashionStd = 0.3530f;
// split: "train" or "test". limit > 0 keeps the first `limit` examples.
ImageSet load_fashion_mnist(const std::string& dir, const std::string& split, int64_t limit = 0);

// Image tasks for adapters over one base (applied identically to train and test):
//   ""                 the dataset as it is
//   "permute:seed=N"   a fixed seeded permutation of the pixels
//   "rotate:deg=D"     every image rotated by D degrees about its centre
//                      (nearest neighbour; multiples of 90 are exact)
//   "classes:A,B,..."  only examples of these classes (labels keep their ids)
// A malformed spec is an Error naming it.
void apply_image_task(ImageSet* s, const std::string& task, int64_t side = 28);

// The same task as a view over the untouched images, so several tasks can
// share one copy of a dataset: example k of the task is base example
// example(k), and its pixel i is base pixel source[i] (-1: the background,
// the standardised black).
struct ImageTask {
  std::vector<int32_t> source;    // empty: pixels as they are
  std::vector<int64_t> examples;  // used when subset (classes:...)
  bool subset = false;
  float background = (0.0f - kFashionMean) / kFashionStd;
  int64_t size(const ImageSet& s) const {
    return subset ? static_cast<int64_t>(examples.size()) : s.size();
  }
  int64_t example(int64_t k) const { return subset ? examples[k] : k; }
  int32_t label(const ImageSet& s, int64_t k) const { return s.labels[example(k)]; }
  void row(const ImageSet& s, int64_t k, float* dst) const;  // dst: features() floats
};
ImageTask parse_image_task(const ImageSet& s, const std::string& task, int64_t side = 28);
// Checks an image task's spelling without the data (Error naming it).
void check_image_task(const std::string& task, int64_t side = 28);

// A token stream (bytes are tokens 0..255 for byte-level text).
struct TokenCorpus {
  std::vector<int32_t> tokens;
  int64_t vocab = 256;
  std::vector<std::string> files;  // what it was read from
};
// Expands each pattern with glob(3) (sorted); a pattern that matches nothing
// is an error naming it.
std::vector<std::string> expand_globs(const std::vector<std::string>& patterns);
TokenCorpus load_text(const std::vector<std::string>& patterns);
// .bin token files: raw little-endian uint16/uint32 (nanoGPT), or llm.c's
// format (256 x int32 header, magic 20240520) detected by its magic.
TokenCorpus load_token_bins(const std::vector<std::string>& patterns, int token_bytes);
// The held-out tail: train gets [0, n - h), test gets [n - h, n).
void split_holdout(const TokenCorpus& all, double holdout, TokenCorpus* train, TokenCorpus* test);

// Seeded epoch-wise shuffling of n items into global batches; each rank takes
// its contiguous share of every global batch. The state (epoch, cursor) is all
// a checkpoint needs to resume the exact sequence.
class Sampler {
 public:
  Sampler(int64_t n, int64_t global_batch, uint64_t seed, int rank = 0, int world = 1,
          bool shuffle = true);
  // Indices of this rank's share of the next global batch (drops the last
  // partial batch of an epoch).
  std::vector<int64_t> next();
  int64_t epoch() const { return epoch_; }
  int64_t cursor() const { return cursor_; }
  int64_t batches_per_epoch() const { return n_ / global_batch_; }
  void set_position(int64_t epoch, int64_t cursor);
  std::string state() const;             // "epoch cursor"
  void set_state(const std::string& s);  // throws Error on malformed text

 private:
  void reshuffle();
  int64_t n_, global_batch_;
  uint64_t seed_;
  int rank_, world_;
  bool shuffle_;
  int64_t epoch_ = 0, cursor_ = 0;
  std::vector<int64_t> perm_;
};

// Next-token windows over a token corpus: window w of epoch e covers tokens
// [shift_e + w*T, shift_e + w*T + T] (inputs and targets shifted by one).
class LmWindows {
 public:
  LmWindows(const TokenCorpus* corpus, int64_t T);
  int64_t count() const { return count_; }
  // Fills ids / targets ([B*T] each) for the given window indices of `epoch`.
  void fill(const std::vector<int64_t>& windows, int64_t epoch, std::vector<int32_t>* ids,
            std::vector<int32_t>* targets) const;

 private:
  const TokenCorpus* corpus_;
  int64_t T_, count_;
};

}  // namespace tessera::data
