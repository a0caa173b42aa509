#include "runtime/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "runtime/common/error.h"

namespace tessera::io {

using nlohmann::json;

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400u)) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if (((x >> 23) & 0xff) == 0xff)
    return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0));
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exp <= 0) {
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) ++half;  // round to nearest even
  return static_cast<uint16_t>(half);
}

float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // NaN
  x += 0x7fffu + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(str("cannot open safetensors file '", path, "': ", std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(str("'", path, "' is not a regular file"));
  }
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->source_ = path;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const uint8_t* base = nullptr;
  if (size > 0) {
    void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      ::close(fd);
      throw Error(str("cannot map '", path, "': ", std::strerror(errno)));
    }
    f->map_ = m;
    f->map_size_ = size;
    base = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  f->validate(base, size);
  return f;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::parse(std::vector<uint8_t> bytes,
                                                        const std::string& source) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->source_ = source;
  f->owned_ = std::move(bytes);
  f->validate(f->owned_.data(), f->owned_.size());
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, map_size_);
}

void SafetensorsFile::validate(const uint8_t* base, uint64_t size) {
  auto fail = [&](const std::string& why) -> void {
    throw Error(str("malformed safetensors file '", source_, "': ", why));
  };
  if (size < 8)
    fail(str("truncated: ", size, " bytes, but the file must start with an 8-byte header length"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > kMaxHeaderBytes)
    fail(
        str("header length ", n, " exceeds the 100 MB limit (a corrupt or non-safetensors file?)"));
  if (n > size - 8)
    fail(str("header length ", n, " runs past the end of the file (", size, " bytes)"));
  if (n < 2) fail(str("header length ", n, " is too short to hold a JSON object"));
  std::string header(reinterpret_cast<const char*>(base + 8), n);

  std::set<std::string> keys;
  std::string duplicate;
  json j;
  try {
    j = json::parse(header, [&](int depth, json::parse_event_t ev, json& parsed) {
      if (depth == 1 && ev == json::parse_event_t::key) {
        std::string k = parsed.get<std::string>();
        if (!keys.insert(k).second && duplicate.empty()) duplicate = k;
      }
      return true;
    });
  } catch (const json::exception& e) {
    fail(str("header is not valid JSON: ", e.what()));
  }
  if (!duplicate.empty()) fail(str("tensor name '", duplicate, "' appears twice in the header"));
  if (!j.is_object()) fail("header JSON is not an object");

  const uint64_t data_size = size - 8 - n;
  data_ = base + 8 + n;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) fail("__metadata__ is not an object of strings");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string())
          fail(str("__metadata__ value for '", m.key(), "' is not a string"));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!e.is_object()) fail(str("entry '", name, "' is not an object"));
    TensorInfo t;
    t.name = name;
    if (!e.contains("dtype") || !e["dtype"].is_string())
      fail(str("tensor '", name, "' has no dtype string"));
    if (!parse_dtype(e["dtype"].get<std::string>(), &t.dtype))
      fail(str("tensor '", name, "' has unknown dtype '", e["dtype"].get<std::string>(), "'"));
    if (!e.contains("shape") || !e["shape"].is_array())
      fail(str("tensor '", name, "' has no shape array"));
    uint64_t numel = 1;
    bool overflow = false;
    for (const json& d : e["shape"]) {
      if (!d.is_number_unsigned())
        fail(str("tensor '", name, "' has a non-integer or negative dim"));
      uint64_t v = d.get<uint64_t>();
      t.shape.push_back(static_cast<int64_t>(v));
      if (v > 0 && numel > std::numeric_limits<uint64_t>::max() / v) overflow = true;
      numel *= v;
    }
    if (overflow || numel > std::numeric_limits<int64_t>::max())
      fail(str("tensor '", name, "' shape overflows"));
    if (!e.contains("data_offsets") || !e["data_offsets"].is_array() ||
        e["data_offsets"].size() != 2 || !e["data_offsets"][0].is_number_unsigned() ||
        !e["data_offsets"][1].is_number_unsigned())
      fail(str("tensor '", name, "' needs data_offsets [begin, end] of non-negative integers"));
    t.begin = e["data_offsets"][0].get<uint64_t>();
    t.end = e["data_offsets"][1].get<uint64_t>();
    if (t.end < t.begin) fail(str("tensor '", name, "' has data_offsets end < begin"));
    const uint64_t elem = dtype_size(t.dtype);
    if (numel > std::numeric_limits<uint64_t>::max() / elem || t.end - t.begin != numel * elem)
      fail(str("tensor '", name, "': shape ", shape_str(t.shape), " of ", dtype_name(t.dtype),
               " needs ", numel * elem, " bytes but data_offsets span ", t.end - t.begin));
    if (t.end > data_size)
      fail(str("tensor '", name, "' data [", t.begin, ", ", t.end, ") runs past the data section (",
               data_size, " bytes)"));
    tensors_.push_back(std::move(t));
  }
  // Ranges must tile the data section exactly: no overlaps, no gaps, no trailing bytes.
  std::vector<const TensorInfo*> order;
  for (const auto& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t pos = 0;
  for (const TensorInfo* t : order) {
    if (t->begin < pos) fail(str("tensor '", t->name, "' overlaps the tensor before it"));
    if (t->begin > pos)
      fail(str("gap of ", t->begin - pos, " bytes before tensor '", t->name, "'"));
    pos = t->end;
  }
  if (pos != data_size)
    fail(str("data section has ", data_size, " bytes but the tensors cover ", pos));
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Tensor SafetensorsFile::load_f32(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw Error(str("'", source_, "' has no tensor named '", name, "'"));
  return load_f32(*t);
}

Tensor SafetensorsFile::load_f32(const TensorInfo& info) const {
  Tensor out = Tensor::empty(info.shape);
  const uint8_t* src = bytes(info);
  const int64_t n = out.numel();
  float* dst = out.data();
  switch (info.dtype) {
    case DType::F32:
      if (n) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      break;
    case DType::F64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      break;
    default:
      throw Error(str("tensor '", info.name, "' in '", source_, "' has dtype ",
                      dtype_name(info.dtype), "; expected a float type (F32, F16, BF16, F64)"));
  }
  return out;
}

WriteEntry WriteEntry::f32(const std::string& name, const Tensor& t) {
  TESSERA_CHECK(t.device() == Device::CPU, "save a CPU tensor");
  return {name, DType::F32, t.shape(), t.data(), static_cast<size_t>(t.numel()) * 4};
}

std::vector<uint8_t> serialize_safetensors(const std::vector<WriteEntry>& entries,
                                           const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  std::set<std::string> names;
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& e : entries) {
    if (e.name == "__metadata__" || !names.insert(e.name).second)
      throw Error(str("cannot save: tensor name '", e.name, "' is reserved or repeated"));
    uint64_t need = static_cast<uint64_t>(shape_numel(e.shape)) * dtype_size(e.dtype);
    TESSERA_CHECK(need == e.nbytes, "entry ", e.name, " has ", e.nbytes, " bytes, needs ", need);
    h[e.name] = {
        {"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + need}}};
    off += need;
  }
  std::string hs = h.dump();
  while (hs.size() % 8) hs.push_back(' ');
  std::vector<uint8_t> out(8 + hs.size() + off);
  uint64_t n = hs.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, hs.data(), hs.size());
  uint8_t* p = out.data() + 8 + hs.size();
  for (const auto& e : entries) {
    if (e.nbytes) std::memcpy(p, e.data, e.nbytes);
    p += e.nbytes;
  }
  return out;
}

void write_file_atomic(const std::string& path, const void* data, size_t n) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(str("cannot write '", path, "': ", std::strerror(errno)));
  const uint8_t* p = static_cast<const uint8_t*>(data);
  size_t left = n;
  while (left > 0) {
    ssize_t w = ::write(fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Error(str("cannot write '", path, "': ", std::strerror(err)));
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error(str("cannot flush '", path, "': ", std::strerror(errno)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Error(str("cannot rename into '", path, "': ", std::strerror(err)));
  }
}

void save_safetensors(const std::string& path, const std::vector<WriteEntry>& entries,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<uint8_t> bytes = serialize_safetensors(entries, metadata);
  write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace tessera::io
