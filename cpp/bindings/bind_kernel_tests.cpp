// Test hooks (in `annforge._core._testing`): run one kernel of one SIMD level on NumPy arrays (tests/test_kernels.py).
//
//   _core._testing._kernel(level, name, *arrays, guard=True) -> float | ndarray
//   _core._testing._kernel_dot_packed(level, q, x, d, ldo, guard=True) -> ndarray (nq, ldo)
//   _core._testing._kernel_panel_rows(level) -> int
//
// With guard=True every input is copied into a buffer that ends exactly at an inaccessible page (POSIX
// only), and so is every output, so a kernel that reads or writes one element past the end of its data
// crashes the test instead of passing silently. With guard=False the kernels see NumPy's own buffers,
// which is how the tests pass deliberately unaligned (sliced) inputs.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "annforge/simd/kernels.h"
#include "bind_common.h"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define ANNFORGE_GUARD_PAGES 1
#endif

namespace annforge::py_bindings {
namespace {

// `bytes` bytes that end exactly at a PROT_NONE page (or plain heap memory where that is unsupported).
class Guarded {
 public:
  explicit Guarded(std::size_t bytes) {
#ifdef ANNFORGE_GUARD_PAGES
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t data_pages = (bytes + page - 1) / page;
    map_len_ = (data_pages + 1) * page;
    void* p = mmap(nullptr, map_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    map_ = static_cast<char*>(p);
    if (mprotect(map_ + data_pages * page, page, PROT_NONE) != 0) {
      munmap(map_, map_len_);
      throw std::bad_alloc();
    }
    data_ = map_ + data_pages * page - bytes;
#else
    heap_.resize(bytes + 1);
    data_ = heap_.data();
#endif
  }
  ~Guarded() {
#ifdef ANNFORGE_GUARD_PAGES
    if (map_) munmap(map_, map_len_);
#endif
  }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  char* data() const { return data_; }

 private:
  char* data_ = nullptr;
#ifdef ANNFORGE_GUARD_PAGES
  char* map_ = nullptr;
  std::size_t map_len_ = 0;
#else
  std::vector<char> heap_;
#endif
};

template <typename T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

// A C-contiguous array of T of rank 1 (one row) or 2, as the kernel will see it.
template <typename T>
struct In {
  Arr<T> owner;
  std::unique_ptr<Guarded> copy;
  const T* ptr = nullptr;
  std::size_t rows = 0, cols = 0;
  std::size_t size() const { return rows * cols; }
};

template <typename T>
In<T> input(const py::handle& obj, const char* what, bool guard, std::size_t used = SIZE_MAX) {
  In<T> in;
  in.owner = Arr<T>::ensure(obj);
  if (!in.owner) {
    PyErr_Clear();
    fail(ErrorKind::Type, what, ": not convertible to the kernel's element type");
  }
  if (in.owner.ndim() == 1) {
    in.rows = 1;
    in.cols = static_cast<std::size_t>(in.owner.shape(0));
  } else if (in.owner.ndim() == 2) {
    in.rows = static_cast<std::size_t>(in.owner.shape(0));
    in.cols = static_cast<std::size_t>(in.owner.shape(1));
  } else {
    fail(ErrorKind::Value, what, ": expected rank 1 or 2, got ", in.owner.ndim());
  }
  in.ptr = in.owner.data();
  if (guard) {
    // Only the first `used` elements are handed to the kernel: the guard page follows the last of them.
    const std::size_t n = used < in.size() ? used : in.size();
    in.copy = std::make_unique<Guarded>(n * sizeof(T));
    if (n) std::memcpy(in.copy->data(), in.ptr, n * sizeof(T));
    in.ptr = reinterpret_cast<const T*>(in.copy->data());
  }
  return in;
}

// An output of `n` elements of T: written by the kernel, then copied into a NumPy array.
template <typename T>
struct Out {
  std::unique_ptr<Guarded> copy;
  std::vector<T> plain;
  T* ptr = nullptr;
  std::size_t n = 0;
  Out(std::size_t count, bool guard, T fill) : n(count) {
    if (guard) {
      copy = std::make_unique<Guarded>(n * sizeof(T));
      ptr = reinterpret_cast<T*>(copy->data());
    } else {
      plain.resize(n + 1);
      ptr = plain.data();
    }
    for (std::size_t i = 0; i < n; ++i) ptr[i] = fill;
  }
  py::array_t<T> to_numpy(std::size_t rows, std::size_t cols) const {
    py::array_t<T> a(std::vector<py::ssize_t>{static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
    if (n) std::memcpy(a.mutable_data(), ptr, n * sizeof(T));
    return a;
  }
  py::array_t<T> to_numpy() const {
    py::array_t<T> a(static_cast<py::ssize_t>(n));
    if (n) std::memcpy(a.mutable_data(), ptr, n * sizeof(T));
    return a;
  }
};

const simd::Kernels& table(const std::string& level) { return simd::kernels_for(simd::parse_level(level.c_str())); }

void need(const py::args& args, std::size_t count, const std::string& name) {
  ANNFORGE_CHECK(args.size() == count, ErrorKind::Value, "kernel '", name, "' takes ", count, " arrays, got ",
                 args.size());
}

void same_dim(std::size_t a, std::size_t b, const std::string& name) {
  ANNFORGE_CHECK(a == b, ErrorKind::Value, "kernel '", name, "': dimension mismatch (", a, " vs ", b, ")");
}

py::object run_kernel(const std::string& level, const std::string& name, const py::args& args, bool guard) {
  const simd::Kernels& K = table(level);
  constexpr float kFill = -12345.0f;

  // --- pairs --------------------------------------------------------------------------------------
  if (name == "l2_sqr" || name == "dot") {
    need(args, 2, name);
    auto a = input<float>(args[0], "a", guard), b = input<float>(args[1], "b", guard);
    same_dim(a.size(), b.size(), name);
    return py::float_((name == "dot" ? K.dot : K.l2_sqr)(a.ptr, b.ptr, a.size()));
  }
  if (name == "l2_sqr_f16" || name == "dot_f16") {
    need(args, 2, name);
    auto q = input<float>(args[0], "q", guard);
    auto x = input<std::uint16_t>(args[1], "x", guard);
    same_dim(q.size(), x.size(), name);
    return py::float_((name == "dot_f16" ? K.dot_f16 : K.l2_sqr_f16)(q.ptr, x.ptr, q.size()));
  }
  if (name == "l2_sqr_sq8") {
    need(args, 3, name);
    auto q = input<float>(args[0], "q", guard), s = input<float>(args[2], "scale", guard);
    auto c = input<std::uint8_t>(args[1], "code", guard);
    same_dim(q.size(), c.size(), name);
    same_dim(q.size(), s.size(), name);
    return py::float_(K.l2_sqr_sq8(q.ptr, c.ptr, s.ptr, q.size()));
  }
  if (name == "dot_u8") {
    need(args, 2, name);
    auto w = input<float>(args[0], "w", guard);
    auto c = input<std::uint8_t>(args[1], "code", guard);
    same_dim(w.size(), c.size(), name);
    return py::float_(K.dot_u8(w.ptr, c.ptr, w.size()));
  }

  // --- one query against rows -----------------------------------------------------------------------
  if (name == "l2_sqr_rows" || name == "dot_rows") {
    need(args, 2, name);
    auto q = input<float>(args[0], "q", guard), x = input<float>(args[1], "x", guard);
    same_dim(q.size(), x.cols, name);
    Out<float> out(x.rows, guard, kFill);
    (name == "dot_rows" ? K.dot_rows : K.l2_sqr_rows)(q.ptr, x.ptr, x.rows, x.cols, out.ptr);
    return out.to_numpy();
  }
  if (name == "l2_sqr_f16_rows" || name == "dot_f16_rows") {
    need(args, 2, name);
    auto q = input<float>(args[0], "q", guard);
    auto x = input<std::uint16_t>(args[1], "x", guard);
    same_dim(q.size(), x.cols, name);
    Out<float> out(x.rows, guard, kFill);
    (name == "dot_f16_rows" ? K.dot_f16_rows : K.l2_sqr_f16_rows)(q.ptr, x.ptr, x.rows, x.cols, out.ptr);
    return out.to_numpy();
  }
  if (name == "l2_sqr_sq8_rows") {
    need(args, 3, name);
    auto q = input<float>(args[0], "q", guard), s = input<float>(args[2], "scale", guard);
    auto c = input<std::uint8_t>(args[1], "codes", guard);
    same_dim(q.size(), c.cols, name);
    same_dim(q.size(), s.size(), name);
    Out<float> out(c.rows, guard, kFill);
    K.l2_sqr_sq8_rows(q.ptr, c.ptr, s.ptr, c.rows, c.cols, out.ptr);
    return out.to_numpy();
  }
  if (name == "dot_u8_rows") {
    need(args, 2, name);
    auto w = input<float>(args[0], "w", guard);
    auto c = input<std::uint8_t>(args[1], "codes", guard);
    same_dim(w.size(), c.cols, name);
    Out<float> out(c.rows, guard, kFill);
    K.dot_u8_rows(w.ptr, c.ptr, c.rows, c.cols, out.ptr);
    return out.to_numpy();
  }

  // --- conversions and packing -----------------------------------------------------------------------
  if (name == "f32_to_f16") {
    need(args, 1, name);
    auto x = input<float>(args[0], "x", guard);
    Out<std::uint16_t> out(x.size(), guard, 0xdeadu);
    K.f32_to_f16(x.ptr, out.ptr, x.size());
    return out.to_numpy();
  }
  if (name == "f16_to_f32") {
    need(args, 1, name);
    auto x = input<std::uint16_t>(args[0], "x", guard);
    Out<float> out(x.size(), guard, kFill);
    K.f16_to_f32(x.ptr, out.ptr, x.size());
    return out.to_numpy();
  }
  if (name == "pack_rows") {
    need(args, 1, name);
    auto x = input<float>(args[0], "x", guard);
    Out<float> out(K.packed_size(x.rows, x.cols), guard, kFill);
    K.pack_rows(x.ptr, x.rows, x.cols, out.ptr);
    return out.to_numpy();
  }
  if (name == "indices_at_least") {  // (x, bound) with bound a one-element array
    need(args, 2, name);
    auto x = input<float>(args[0], "x", guard), bound = input<float>(args[1], "bound", false);
    ANNFORGE_CHECK(bound.size() == 1, ErrorKind::Value, "bound must hold one value");
    Out<std::uint32_t> out(x.size(), guard, 0xdeadbeefu);
    const std::size_t count = K.indices_at_least(x.ptr, x.size(), bound.ptr[0], out.ptr);
    ANNFORGE_CHECK(count <= x.size(), ErrorKind::Value, "indices_at_least returned ", count, " > n");
    py::array_t<std::uint32_t> res(static_cast<py::ssize_t>(count));
    if (count) std::memcpy(res.mutable_data(), out.ptr, count * sizeof(std::uint32_t));
    return res;
  }
  if (name == "fwht") {  // (x), x.size() a power of two; transformed in a (guarded) copy
    need(args, 1, name);
    auto x = input<float>(args[0], "x", false);
    const std::size_t n = x.size();
    ANNFORGE_CHECK(n >= 1 && (n & (n - 1)) == 0, ErrorKind::Value, "fwht needs a power-of-two length, got ", n);
    Out<float> out(n, guard, kFill);
    std::memcpy(out.ptr, x.ptr, n * sizeof(float));
    K.fwht(out.ptr, n);
    return out.to_numpy();
  }
  fail(ErrorKind::Value, "unknown kernel '", name, "'");
}

// pack_rows + dot_packed: q is (nq, ldq) with ldq >= d (only the first d columns of each row are used,
// and the last row is cut to d elements so that reading past it faults), x is (n, d); returns the
// whole (nq, ldo) output, whose columns n .. ldo-1 must still hold the fill value -12345.
py::array_t<float> run_dot_packed(const std::string& level, const py::handle& qobj, const py::handle& xobj,
                                  std::size_t d, std::size_t ldo, bool guard) {
  const simd::Kernels& K = table(level);
  auto x = input<float>(xobj, "x", guard);
  ANNFORGE_CHECK(x.cols == d, ErrorKind::Value, "x has ", x.cols, " columns, expected d = ", d);
  auto qarr = Arr<float>::ensure(qobj);
  ANNFORGE_CHECK(qarr && qarr.ndim() == 2, ErrorKind::Value, "q must be a 2-D float32 array");
  const std::size_t nq = static_cast<std::size_t>(qarr.shape(0)), ldq = static_cast<std::size_t>(qarr.shape(1));
  ANNFORGE_CHECK(ldq >= d, ErrorKind::Value, "q has ", ldq, " columns < d = ", d);
  ANNFORGE_CHECK(ldo >= x.rows, ErrorKind::Value, "ldo = ", ldo, " < n = ", x.rows);
  const std::size_t q_used = nq ? (nq - 1) * ldq + d : 0;
  auto q = input<float>(qarr, "q", guard, q_used);
  const std::size_t n = x.rows;

  Out<float> packed(K.packed_size(n, d), guard, 0.0f);
  K.pack_rows(x.ptr, n, d, packed.ptr);
  // The output's last row ends at column n: writes past it fault; padding columns must stay intact.
  const std::size_t out_used = nq ? (nq - 1) * ldo + n : 0;
  Out<float> out(out_used, guard, -12345.0f);
  K.dot_packed(q.ptr, nq, ldq, packed.ptr, n, d, out.ptr, ldo);

  py::array_t<float> res(std::vector<py::ssize_t>{static_cast<py::ssize_t>(nq), static_cast<py::ssize_t>(ldo)});
  float* r = res.mutable_data();
  for (std::size_t i = 0; i < nq * ldo; ++i) r[i] = i < out_used ? out.ptr[i] : -12345.0f;
  return res;
}

}  // namespace

void bind_kernel_tests(py::module_& m) {  // m: the _testing submodule
  m.def(
      "_kernel",
      [](const std::string& level, const std::string& name, py::args args, bool guard) {
        return run_kernel(level, name, args, guard);
      },
      py::arg("level"), py::arg("name"), py::arg("guard") = true,
      "Private test hook: run one kernel of the Kernels table at one SIMD level.");
  m.def("_kernel_dot_packed", &run_dot_packed, py::arg("level"), py::arg("q"), py::arg("x"), py::arg("d"),
        py::arg("ldo"), py::arg("guard") = true,
        "Private test hook: pack_rows(x) then dot_packed(q[:, :d]) with output stride ldo.");
  m.def("_kernel_panel_rows", [](const std::string& level) { return table(level).panel_rows; }, py::arg("level"),
        "Private test hook: the packed-panel height of one SIMD level.");
}

}  // namespace annforge::py_bindings
