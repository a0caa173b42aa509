// One enum <-> name table per enum, and one way to read a name: an unknown
// name is an Error "WHAT 'x': expected one of a, b or c" listing every name
// in table order. Adapter kinds, activations, decoder flavours, and later
// routers and federated strategies each declare their table once and use it
// for printing and parsing.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "runtime/common/error.h"

namespace tessera {

template <typename E>
class NameTable {
 public:
  NameTable(std::initializer_list<std::pair<E, const char*>> rows) : rows_(rows) {}

  // The name of `e`; "?" for a value the table does not hold.
  const char* name(E e) const {
    for (const auto& [v, n] : rows_)
      if (v == e) return n;
    return "?";
  }
  bool find(const std::string& s, E* out) const {
    for (const auto& [v, n] : rows_)
      if (s == n) {
        *out = v;
        return true;
      }
    return false;
  }
  // `what` names the input in the message ("adapter kind", "mlp.activation").
  E parse(const std::string& s, const std::string& what) const {
    E e{};
    if (find(s, &e)) return e;
    throw Error(str(what, " '", s, "': expected one of ", list()));
  }
  // "a, b or c"
  std::string list() const {
    std::string out;
    for (size_t i = 0; i < rows_.size(); ++i)
      out += std::string(i == 0 ? "" : i + 1 == rows_.size() ? " or " : ", ") + rows_[i].second;
    return out;
  }
  const std::vector<std::pair<E, const char*>>& rows() const { return rows_; }

 private:
  std::vector<std::pair<E, const char*>> rows_;
};

}  // namespace tessera
