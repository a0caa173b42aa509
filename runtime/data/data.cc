#include "runtime/data/data.h"

#include <glob.h>
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <sstream>

#include "runtime/common/error.h"
#include "runtime/common/file.h"

namespace tessera::data {

namespace {

bool file_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The file through the one reader, inflated when it is gzip (its magic
// 1f 8b; concatenated members too, as gzread reads them).
std::vector<uint8_t> read_maybe_gzip(const std::string& path) {
  std::vector<uint8_t> raw = read_file_bytes(path, "IDX file");
  if (raw.size() < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
    throw Error(str("'", path, "': cannot start zlib's inflate"));
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 16);
  z.next_in = raw.data();
  z.avail_in = static_cast<uInt>(raw.size());  // IDX files are far below 4 GiB
  int rc = Z_OK;
  for (;;) {
    z.next_out = buf.data();
    z.avail_out = static_cast<uInt>(buf.size());
    rc = inflate(&z, Z_NO_FLUSH);
    out.insert(out.end(), buf.begin(), buf.end() - z.avail_out);
    if (rc == Z_STREAM_END) {
      if (z.avail_in == 0) break;
      inflateReset(&z);  // another gzip member follows
      continue;
    }
    if (rc != Z_OK) break;
  }
  const std::string msg = z.msg ? z.msg : rc == Z_BUF_ERROR ? "truncated" : "inflate failed";
  inflateEnd(&z);
  if (rc != Z_STREAM_END) throw Error(str("'", path, "' is corrupt or not gzip/IDX data: ", msg));
  return out;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

Idx parse_idx(const std::vector<uint8_t>& b, const std::string& source) {
  auto fail = [&](const std::string& why) {
    throw Error(str("bad IDX file '", source, "': ", why));
  };
  if (b.size() < 4) fail(str("only ", b.size(), " bytes; an IDX file starts with a 4-byte magic"));
  if (b[0] != 0 || b[1] != 0) fail("magic does not start with two zero bytes");
  if (b[2] != 0x08)
    fail(str("element type 0x", std::hex, int{b[2]}, " is not unsigned byte (0x08)"));
  const int nd = b[3];
  if (nd < 1 || nd > 4) fail(str(nd, " dimensions; expected 1 to 4"));
  if (b.size() < 4u + 4u * nd) fail("truncated in the dimension list");
  Idx idx;
  uint64_t total = 1;
  for (int i = 0; i < nd; ++i) {
    uint32_t d = be32(b.data() + 4 + 4 * i);
    idx.dims.push_back(d);
    total *= d;
    if (total > (1ull << 40)) fail("dimensions overflow");
  }
  const size_t off = 4 + 4 * static_cast<size_t>(nd);
  if (b.size() - off != total)
    fail(str("dims ", shape_str(idx.dims), " need ", total, " bytes of data, file has ",
             b.size() - off));
  idx.data.assign(b.begin() + static_cast<std::ptrdiff_t>(off), b.end());
  return idx;
}

Idx read_idx(const std::string& path) {
  return parse_idx(read_maybe_gzip(path), path);
}

namespace {
// Decoded IDX files by path, size and modification time: a process that
// trains many adapters (build-library) inflates Fashion-MNIST once, not once
// an adapter. The last four files stay (Fashion-MNIST is four: 55 MB).
std::shared_ptr<const Idx> cached_idx(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw Error(str("cannot read IDX file '", path, "': ", std::strerror(errno)));
  const std::string key = path + '\0' + std::to_string(st.st_size) + '\0' +
                          std::to_string(st.st_mtim.tv_sec) + '.' +
                          std::to_string(st.st_mtim.tv_nsec);
  static std::mutex mu;
  static std::list<std::pair<std::string, std::shared_ptr<const Idx>>> recent;
  std::lock_guard<std::mutex> l(mu);
  for (auto it = recent.begin(); it != recent.end(); ++it)
    if (it->first == key) {
      recent.splice(recent.begin(), recent, it);
      return it->second;
    }
  auto idx = std::make_shared<const Idx>(read_idx(path));
  recent.emplace_front(key, idx);
  if (recent.size() > 4) recent.pop_back();
  return idx;
}
}  // namespace

ImageSet load_fashion_mnist(const std::string& dir_in, const std::string& split, int64_t limit) {
  const std::string dir = dir_in.empty() ? kFashionMnistDir : dir_in;
  if (split != "train" && split != "test")
    throw Error(str("Fashion-MNIST split '", split, "': expected 'train' or 'test'"));
  const std::string stem = split == "train" ? "train" : "t10k";
  auto pick = [&](const std::string& base) {
    for (const std::string& p : {dir + "/" + base + ".gz", dir + "/" + base})
      if (file_exists(p)) return p;
    throw Error(str("Fashion-MNIST file '", dir, "/", base,
                    ".gz' not found; install the Debian package ", kFashionMnistPackage,
                    " (scripts/install-deps.sh) or set the data dir"));
  };
  const std::shared_ptr<const Idx> im_p = cached_idx(pick(stem + "-images-idx3-ubyte"));
  const std::shared_ptr<const Idx> lb_p = cached_idx(pick(stem + "-labels-idx1-ubyte"));
  const Idx& im = *im_p;
  const Idx& lb = *lb_p;
  if (im.dims.size() != 3)
    throw Error(str("Fashion-MNIST images must be 3-D, got ", shape_str(im.dims)));
  if (lb.dims.size() != 1 || lb.dims[0] != im.dims[0])
    throw Error(str("Fashion-MNIST: ", lb.dims.empty() ? 0 : lb.dims[0], " labels for ", im.dims[0],
                    " images"));
  int64_t n = im.dims[0];
  if (limit > 0) n = std::min(n, limit);
  const int64_t f = im.dims[1] * im.dims[2];
  ImageSet s;
  s.images = Tensor::empty({n, f});
  float* p = s.images.data();
  for (int64_t i = 0; i < n * f; ++i)
    p[i] = (static_cast<float>(im.data[i]) / 255.0f - kFashionMean) / kFashionStd;
  s.labels.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (lb.data[i] > 9)
      throw Error(str("Fashion-MNIST label ", int{lb.data[i]}, " at ", i, " is > 9"));
    s.labels[i] = lb.data[i];
  }
  return s;
}

namespace {
int64_t parse_int(const std::string& v, const std::string& task) {
  try {
    size_t pos = 0;
    long long x = std::stoll(v, &pos);
    if (pos != v.size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    throw Error(str("task '", task, "': '", v, "' is not an integer"));
  }
}
}  // namespace

void check_image_task(const std::string& task, int64_t side) {
  ImageSet probe;  // one example of each class, blank
  probe.images = Tensor::zeros({10, side * side});
  for (int32_t c = 0; c < 10; ++c) probe.labels.push_back(c);
  parse_image_task(probe, task, side);
}

ImageTask parse_image_task(const ImageSet& s, const std::string& task, int64_t side) {
  ImageTask t;
  if (task.empty()) return t;
  const size_t colon = task.find(':');
  const std::string kind = task.substr(0, colon);
  const std::string arg = colon == std::string::npos ? "" : task.substr(colon + 1);
  const int64_t N = s.size(), F = s.features();
  auto value_of = [&](const std::string& key) {
    if (arg.rfind(key + "=", 0) != 0)
      throw Error(str("task '", task, "': expected ", kind, ":", key, "=<integer>"));
    return parse_int(arg.substr(key.size() + 1), task);
  };
  if (kind == "permute") {
    const uint64_t seed = static_cast<uint64_t>(value_of("seed"));
    t.source.resize(static_cast<size_t>(F));
    for (int64_t i = 0; i < F; ++i) t.source[i] = static_cast<int32_t>(i);
    Rng rng(seed ^ 0x5EEDULL);
    for (int64_t i = F - 1; i > 0; --i)
      std::swap(t.source[i],
                t.source[static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)))]);
  } else if (kind == "rotate") {
    if (side * side != F)
      throw Error(str("task '", task, "': images of ", F, " pixels are not ", side, "x", side));
    const double rad = static_cast<double>(value_of("deg")) * M_PI / 180.0;
    const double c = std::cos(rad), sn = std::sin(rad), mid = (side - 1) / 2.0;
    t.source.resize(static_cast<size_t>(F));
    for (int64_t yy = 0; yy < side; ++yy)
      for (int64_t xx = 0; xx < side; ++xx) {
        // Inverse rotation: where in the source does this output pixel come from?
        const double dx = xx - mid, dy = yy - mid;
        const int64_t sx = std::llround(c * dx + sn * dy + mid),
                      sy = std::llround(-sn * dx + c * dy + mid);
        t.source[yy * side + xx] = (sx >= 0 && sx < side && sy >= 0 && sy < side)
                                       ? static_cast<int32_t>(sy * side + sx)
                                       : -1;
      }
  } else if (kind == "classes") {
    std::vector<char> keep(10, 0);
    std::stringstream ss(arg);
    std::string item;
    int count = 0;
    while (std::getline(ss, item, ',')) {
      int64_t k = parse_int(item, task);
      if (k < 0 || k > 9) throw Error(str("task '", task, "': class ", k, " is outside 0..9"));
      keep[k] = 1;
      ++count;
    }
    if (count == 0)
      throw Error(str("task '", task, "': expected classes:A,B,... with at least one class"));
    t.subset = true;
    for (int64_t n = 0; n < N; ++n)
      if (keep[s.labels[n]]) t.examples.push_back(n);
  } else {
    throw Error(str("task '", task, "': expected permute:seed=N, rotate:deg=D or classes:A,B,..."));
  }
  return t;
}

void ImageTask::row(const ImageSet& s, int64_t k, float* dst) const {
  const int64_t F = s.features();
  const float* x = s.images.data() + example(k) * F;
  if (source.empty()) {
    std::copy_n(x, F, dst);
    return;
  }
  for (int64_t i = 0; i < F; ++i) dst[i] = source[i] >= 0 ? x[source[i]] : background;
}

void apply_image_task(ImageSet* s, const std::string& task, int64_t side) {
  const ImageTask t = parse_image_task(*s, task, side);
  if (task.empty()) return;
  const int64_t n = t.size(*s), F = s->features();
  Tensor out = Tensor::empty({n, F});
  std::vector<int32_t> labels(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    t.row(*s, k, out.data() + k * F);
    labels[k] = t.label(*s, k);
  }
  s->images = out;
  s->labels = std::move(labels);
}

std::vector<std::string> expand_globs(const std::vector<std::string>& patterns) {
  std::vector<std::string> out;
  for (const auto& pat : patterns) {
    glob_t g{};
    int rc = ::glob(pat.c_str(), 0, nullptr, &g);
    std::vector<std::string> hits;
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i)
        if (file_exists(g.gl_pathv[i])) hits.emplace_back(g.gl_pathv[i]);
    globfree(&g);
    if (hits.empty()) throw Error(str("no file matches '", pat, "'"));
    std::sort(hits.begin(), hits.end());
    out.insert(out.end(), hits.begin(), hits.end());
  }
  return out;
}

TokenCorpus load_text(const std::vector<std::string>& patterns) {
  TokenCorpus c;
  c.vocab = 256;
  c.files = expand_globs(patterns);
  for (const auto& f : c.files) {
    std::vector<uint8_t> b = read_file_bytes(f, "text file");
    c.tokens.insert(c.tokens.end(), b.begin(), b.end());
  }
  if (c.tokens.size() < 2) throw Error("text corpus has fewer than 2 bytes");
  return c;
}

TokenCorpus load_token_bins(const std::vector<std::string>& patterns, int token_bytes) {
  if (token_bytes != 2 && token_bytes != 4)
    throw Error(str("token_bytes = ", token_bytes, ": expected 2 (uint16) or 4 (uint32)"));
  TokenCorpus c;
  c.files = expand_globs(patterns);
  int64_t max_id = 0;
  for (const auto& f : c.files) {
    std::vector<uint8_t> b = read_file_bytes(f, "token file");
    size_t off = 0;
    int tb = token_bytes;
    if (b.size() >= 1024) {
      int32_t hdr[3];
      std::memcpy(hdr, b.data(), sizeof hdr);
      if (hdr[0] == 20240520) {  // llm.c: version 1 = uint16 tokens, hdr[2] = count
        if (hdr[1] != 1)
          throw Error(str("'", f, "': llm.c token file version ", hdr[1], ", expected 1"));
        tb = 2;
        off = 1024;
        if (b.size() - off != static_cast<size_t>(hdr[2]) * 2)
          throw Error(
              str("'", f, "': header says ", hdr[2], " tokens, file holds ", (b.size() - off) / 2));
      }
    }
    if ((b.size() - off) % tb != 0)
      throw Error(
          str("'", f, "' has ", b.size() - off, " bytes, not a multiple of ", tb, "-byte tokens"));
    for (size_t i = off; i < b.size(); i += tb) {
      uint32_t v = 0;
      std::memcpy(&v, b.data() + i, static_cast<size_t>(tb));
      if (v > 0x7fffffffu) throw Error(str("'", f, "': token id ", v, " too large"));
      c.tokens.push_back(static_cast<int32_t>(v));
      max_id = std::max<int64_t>(max_id, v);
    }
  }
  c.vocab = max_id + 1;
  if (c.tokens.size() < 2) throw Error("token corpus has fewer than 2 tokens");
  return c;
}

void split_holdout(const TokenCorpus& all, double holdout, TokenCorpus* train, TokenCorpus* test) {
  const int64_t n = static_cast<int64_t>(all.tokens.size());
  const int64_t h = static_cast<int64_t>(static_cast<double>(n) * holdout);
  train->vocab = test->vocab = all.vocab;
  train->files = test->files = all.files;
  train->tokens.assign(all.tokens.begin(), all.tokens.begin() + (n - h));
  test->tokens.assign(all.tokens.begin() + (n - h), all.tokens.end());
}

Sampler::Sampler(int64_t n, int64_t global_batch, uint64_t seed, int rank, int world, bool shuffle)
    : n_(n),
      global_batch_(global_batch),
      seed_(seed),
      rank_(rank),
      world_(world),
      shuffle_(shuffle) {
  if (global_batch <= 0) throw Error(str("batch size ", global_batch, " must be > 0"));
  if (world <= 0 || rank < 0 || rank >= world)
    throw Error(str("rank ", rank, " outside world of size ", world));
  if (global_batch % world != 0)
    throw Error(
        str("global batch ", global_batch, " does not split evenly over ", world, " ranks"));
  if (n < global_batch)
    throw Error(str("dataset has ", n, " examples, fewer than one batch of ", global_batch));
  reshuffle();
}

void Sampler::reshuffle() {
  perm_.resize(static_cast<size_t>(n_));
  for (int64_t i = 0; i < n_; ++i) perm_[i] = i;
  if (!shuffle_) return;
  Rng rng(seed_ * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch_) + 1);
  for (int64_t i = n_ - 1; i > 0; --i)
    std::swap(perm_[i], perm_[static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)))]);
}

std::vector<int64_t> Sampler::next() {
  if (cursor_ + global_batch_ > n_) {
    ++epoch_;
    cursor_ = 0;
    reshuffle();
  }
  const int64_t share = global_batch_ / world_;
  std::vector<int64_t> out(perm_.begin() + cursor_ + rank_ * share,
                           perm_.begin() + cursor_ + (rank_ + 1) * share);
  cursor_ += global_batch_;
  return out;
}

void Sampler::set_position(int64_t epoch, int64_t cursor) {
  if (epoch < 0 || cursor < 0 || cursor > n_)
    throw Error(str("sampler position (epoch ", epoch, ", cursor ", cursor,
                    ") is outside the dataset of ", n_));
  epoch_ = epoch;
  cursor_ = cursor;
  reshuffle();
}

std::string Sampler::state() const {
  return str(epoch_, ' ', cursor_);
}

void Sampler::set_state(const std::string& s) {
  std::istringstream is(s);
  int64_t e = -1, c = -1;
  is >> e >> c;
  if (!is) throw Error(str("malformed sampler state '", s, "': expected 'epoch cursor'"));
  set_position(e, c);
}

LmWindows::LmWindows(const TokenCorpus* corpus, int64_t T) : corpus_(corpus), T_(T) {
  const int64_t n = static_cast<int64_t>(corpus->tokens.size());
  // Leave room for a shift of up to T-1 tokens and the final target.
  count_ = n > 2 * T ? (n - T - 1) / T : (n > T ? 1 : 0);
  if (count_ == 0)
    throw Error(str("corpus of ", n, " tokens is too short for one window of ", T, " + 1 tokens"));
}

void LmWindows::fill(const std::vector<int64_t>& windows, int64_t epoch, std::vector<int32_t>* ids,
                     std::vector<int32_t>* targets) const {
  const int64_t n = static_cast<int64_t>(corpus_->tokens.size());
  const int64_t slack = n - 1 - count_ * T_;  // room for a per-epoch shift
  const int64_t shift =
      slack > 0 ? static_cast<int64_t>(Rng(0xC0FFEE + static_cast<uint64_t>(epoch))
                                           .below(static_cast<uint64_t>(std::min(slack, T_) + 1)))
                : 0;
  ids->resize(windows.size() * T_);
  targets->resize(windows.size() * T_);
  const int32_t* tok = corpus_->tokens.data();
  for (size_t b = 0; b < windows.size(); ++b) {
    const int64_t s = shift + windows[b] * T_;
    std::copy(tok + s, tok + s + T_, ids->begin() + static_cast<std::ptrdiff_t>(b * T_));
    std::copy(tok + s + 1, tok + s + T_ + 1,
              targets->begin() + static_cast<std::ptrdiff_t>(b * T_));
  }
}

}  // namespace tessera::data
