// safetensors, spoken exactly: u64 little-endian header length N, N bytes of
// JSON {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {str: str}},
// then the data. The reader maps the file and refuses anything malformed with a
// message naming the file and the fault; it never reads out of bounds.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/common/dtype.h"
#include "runtime/tensor/tensor.h"

namespace tessera::io {

// The dtype vocabulary is tessera's one (runtime/common/dtype.h).
using tessera::DType;
using tessera::dtype_name;
using tessera::dtype_size;
using tessera::parse_dtype;

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // relative to the start of the data section
};

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

class SafetensorsFile {
 public:
  // Maps and validates a file; throws tessera::Error on any fault.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  // Validates an in-memory image (tests, fuzzing); `source` names it in errors.
  static std::shared_ptr<SafetensorsFile> parse(std::vector<uint8_t> bytes,
                                                const std::string& source);
  ~SafetensorsFile();

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& source() const { return source_; }
  const uint8_t* bytes(const TensorInfo& t) const { return data_ + t.begin; }
  // The tensor as fp32 (F32 copied; F16, BF16, F64 converted); other dtypes refused.
  Tensor load_f32(const std::string& name) const;
  Tensor load_f32(const TensorInfo& info) const;

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

 private:
  SafetensorsFile() = default;
  void validate(const uint8_t* base, uint64_t size);
  std::string source_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<uint8_t> owned_;
  const uint8_t* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: fp32 data from a Tensor, or raw bytes of any dtype.
struct WriteEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  static WriteEntry f32(const std::string& name, const Tensor& t);
};

// Serialises to bytes (header padded with spaces to a multiple of 8).
std::vector<uint8_t> serialize_safetensors(const std::vector<WriteEntry>& entries,
                                           const std::map<std::string, std::string>& metadata);
// Writes atomically (temporary file, fsync, rename); throws Error on I/O failure.
void save_safetensors(const std::string& path, const std::vector<WriteEntry>& entries,
                      const std::map<std::string, std::string>& metadata = {});

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

// Writes bytes to path atomically (tmp + fsync + rename).
void write_file_atomic(const std::string& path, const void* data, size_t n);

}  // namespace tessera::io
