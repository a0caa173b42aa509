// The one dtype vocabulary of tessera: safetensors' names ("F32", "BF16",
// "I64", ...), used by io (safetensors files), store (tensor records) and
// dist (collective buffers), so a dtype is written, stored and sent under
// one name. Each user accepts its own subset and says so when refusing.
#pragma once

#include <cstddef>
#include <string>

namespace tessera {

enum class DType {
  BOOL,
  U8,
  I8,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  F64,
  I64,
  U64,
  F8_E4M3,
  F8_E5M2
};
const char* dtype_name(DType d);  // "F32"
size_t dtype_size(DType d);       // bytes per element
// false when `s` names no dtype (the names are case-sensitive, as in safetensors).
bool parse_dtype(const std::string& s, DType* out);

}  // namespace tessera
