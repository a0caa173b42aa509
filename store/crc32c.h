// CRC-32C (Castagnoli), the check RocksDB itself uses: hardware crc32
// instructions (SSE4.2) when the build targets them, a table otherwise.
// Cheap enough to check every tensor on every Get; SHA-256 stays the content
// id and is rechecked by Verify.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tessera::store {

uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace tessera::store
