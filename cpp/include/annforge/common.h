// Core vocabulary shared by every part of annforge: ids, metrics, and the error type.
// No pybind11 here: the bindings translate `annforge::Error` into Python exceptions in one place.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace annforge {

using idx_t = std::int64_t;  // external (user-visible) id; -1 marks "no result"

enum class Metric : std::uint8_t { L2 = 0, IP = 1, Cosine = 2 };

Metric parse_metric(const std::string& name);
const char* metric_name(Metric m);

// The category decides which Python exception the bindings raise.
enum class ErrorKind : std::uint8_t {
  Value,  // ValueError: a value is out of its domain (dimension, k, NaN, ids, ...)
  Type,   // TypeError: wrong kind of object
  IO,     // OSError: file missing, unreadable, corrupted, truncated, foreign
  State,  // ValueError too, but says the object is in the wrong state (untrained, read-only)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void append_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append_all(os, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces: fail(ErrorKind::Value, "k must be >= 1, got ", k).
template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, const Args&... args) {
  std::ostringstream os;
  detail::append_all(os, args...);
  throw Error(kind, os.str());
}

}  // namespace annforge

// Checks that stay on in release builds (never an assert that NDEBUG removes).
#define ANNFORGE_CHECK(cond, kind, ...)                    \
  do {                                                     \
    if (!(cond)) ::annforge::fail((kind), __VA_ARGS__);    \
  } while (0)

// An internal invariant: reports file:line so a bug report is actionable.
#define ANNFORGE_ASSERT(cond)                                                              \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::annforge::fail(::annforge::ErrorKind::Value, "internal error: ", #cond, " at ",   \
                       __FILE__, ":", __LINE__);                                           \
  } while (0)
