// MinHash, MinHash LSH and LSH Forest bindings. Python tokens are copied into one C++ byte buffer while
// the GIL is held; hashing, permutations and index work then run without it.
#include <pybind11/stl.h>

#include <limits>

#include "annforge/cluster/union_find.h"
#include "annforge/index/minhash.h"
#include "annforge/index/minhash_lsh.h"
#include "bind_common.h"
#include "bind_index.h"

namespace annforge::py_bindings {
namespace {

using namespace annforge::minhash;
using SigArray = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;

// Calls sink(pointer, size) with one token's bytes: str (its UTF-8 buffer, read in place), bytes-like, or
// an integer (8 bytes, little-endian).
template <typename Sink>
void with_token_bytes(PyObject* tok, Sink&& sink) {
  if (PyUnicode_Check(tok)) {
    if (PyUnicode_IS_COMPACT_ASCII(tok)) {  // ASCII: the characters are the UTF-8 bytes, read in place
      sink(static_cast<const char*>(PyUnicode_DATA(tok)), static_cast<std::size_t>(PyUnicode_GET_LENGTH(tok)));
      return;
    }
    Py_ssize_t n = 0;
    const char* p = PyUnicode_AsUTF8AndSize(tok, &n);
    if (!p) throw py::error_already_set();
    sink(p, static_cast<std::size_t>(n));
  } else if (PyBytes_Check(tok)) {
    sink(PyBytes_AS_STRING(tok), static_cast<std::size_t>(PyBytes_GET_SIZE(tok)));
  } else if (PyByteArray_Check(tok)) {
    sink(PyByteArray_AS_STRING(tok), static_cast<std::size_t>(PyByteArray_GET_SIZE(tok)));
  } else if (PyLong_Check(tok) && !PyBool_Check(tok)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(tok, &overflow);
    if (overflow) fail(ErrorKind::Value, "integer token out of the int64 range");
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    unsigned char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(static_cast<unsigned long long>(v) >> (8 * i));
    sink(reinterpret_cast<const char*>(b), 8);
  } else if (py::isinstance<py::int_>(tok) && !PyBool_Check(tok)) {  // numpy integers
    with_token_bytes(py::int_(py::reinterpret_borrow<py::object>(tok)).ptr(), sink);
  } else {
    fail(ErrorKind::Type, "tokens must be str, bytes or int, got ", Py_TYPE(tok)->tp_name);
  }
}

void add_token(Corpus& c, PyObject* tok) {
  with_token_bytes(tok, [&c](const char* p, std::size_t n) { c.add_item(p, n); });
}

// Calls sink(pointer, size) for every token of one document (a list of tokens or an integer array).
template <typename Sink>
void for_each_token(const py::handle& doc, Sink&& sink) {
  if (py::isinstance<py::array>(doc)) {
    auto arr = py::reinterpret_borrow<py::array>(doc);
    if (arr.dtype().kind() == 'i' || arr.dtype().kind() == 'u') {
      // Integer arrays: every element is one 8-byte little-endian token.
      auto v = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
      if (!v || v.ndim() != 1) fail(ErrorKind::Value, "an integer-array document must be 1-D");
      const std::int64_t* p = v.data();
      for (py::ssize_t i = 0; i < v.size(); ++i) {
        unsigned char b[8];
        for (int k = 0; k < 8; ++k) b[k] = static_cast<unsigned char>(static_cast<std::uint64_t>(p[i]) >> (8 * k));
        sink(reinterpret_cast<const char*>(b), 8);
      }
      return;
    }
  }
  if (PyUnicode_Check(doc.ptr()) || PyBytes_Check(doc.ptr()))
    fail(ErrorKind::Type, "a document is a string: pass shingle='word3' (or 'char5', ...) to shingle raw text, "
                          "or give a list of tokens");
  PyObject* seq = PySequence_Fast(doc.ptr(), "each document must be a list of tokens (or raw text with shingle=)");
  if (!seq) {
    PyErr_Clear();
    fail(ErrorKind::Type, "each document must be a list of tokens (str, bytes or int), got ",
         Py_TYPE(doc.ptr())->tp_name);
  }
  py::object guard = py::reinterpret_steal<py::object>(seq);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  for (Py_ssize_t i = 0; i < n; ++i) with_token_bytes(items[i], sink);
}

void add_tokens(Corpus& c, const py::handle& doc) {
  for_each_token(doc, [&c](const char* p, std::size_t n) { c.add_item(p, n); });
}

void add_text(Corpus& c, const py::handle& doc) {
  if (PyUnicode_Check(doc.ptr()) || PyBytes_Check(doc.ptr()) || PyByteArray_Check(doc.ptr())) {
    add_token(c, doc.ptr());
    return;
  }
  fail(ErrorKind::Type, "with shingle= each document must be a str (or bytes), got ", Py_TYPE(doc.ptr())->tp_name);
}

Corpus build_corpus(const py::handle& docs, const Shingle& sh) {
  Corpus c;
  if (PyUnicode_Check(docs.ptr()) || PyBytes_Check(docs.ptr()))
    fail(ErrorKind::Type, "docs must be a list of documents, not a single string");
  for (const py::handle doc : docs) {
    if (sh.kind == Shingle::Kind::None)
      add_tokens(c, doc);
    else
      add_text(c, doc);
    c.end_doc();
  }
  return c;
}

Shingle shingle_of(const py::object& spec) {
  if (spec.is_none()) return Shingle{};
  if (!py::isinstance<py::str>(spec)) fail(ErrorKind::Type, "shingle must be a string like 'word3' or None");
  return parse_shingle(spec.cast<std::string>());
}

// [n, num_perm] (or one [num_perm] row) of uint64 signatures.
SigArray as_sigs(const py::handle& obj, std::size_t num_perm, std::size_t& rows) {
  // Fast path: already a C-contiguous uint64 row of the right length (one-at-a-time queries).
  if (SigArray::check_(obj)) {
    auto a = py::reinterpret_borrow<SigArray>(obj);
    if (a.ndim() == 1 && static_cast<std::size_t>(a.shape(0)) == num_perm) {
      rows = 1;
      return a;
    }
  }
  if (!py::isinstance<py::array>(obj) && !py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
    fail(ErrorKind::Type, "signatures must be an array of uint64, got ", Py_TYPE(obj.ptr())->tp_name);
  py::array raw = py::array::ensure(obj);
  if (!raw) throw py::error_already_set();
  if (raw.size() > 0 && raw.dtype().kind() != 'u' && raw.dtype().kind() != 'i')
    fail(ErrorKind::Type, "signatures must be integers (uint64), got dtype ", std::string(py::str(raw.dtype())));
  SigArray a = SigArray::ensure(raw);
  if (!a) throw py::error_already_set();
  if (a.ndim() == 1 && static_cast<std::size_t>(a.shape(0)) == num_perm) {
    rows = 1;
  } else if (a.ndim() == 2 && static_cast<std::size_t>(a.shape(1)) == num_perm) {
    rows = static_cast<std::size_t>(a.shape(0));
  } else {
    fail(ErrorKind::Value, "signatures must have num_perm = ", num_perm, " values per row, got shape ",
         a.ndim() == 1 ? std::to_string(a.shape(0)) : std::string(py::str(py::tuple(py::cast(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()))))));
  }
  return a;
}

py::tuple query_tuple(const QueryResult& r, bool with_scores) {
  py::array_t<std::int64_t> lims(static_cast<py::ssize_t>(r.lims.size()));
  py::array_t<idx_t> keys(static_cast<py::ssize_t>(r.keys.size()));
  std::copy(r.lims.begin(), r.lims.end(), lims.mutable_data());
  std::copy(r.keys.begin(), r.keys.end(), keys.mutable_data());
  if (!with_scores) return py::make_tuple(lims, keys, py::none());
  py::array_t<float> scores(static_cast<py::ssize_t>(r.scores.size()));
  std::copy(r.scores.begin(), r.scores.end(), scores.mutable_data());
  return py::make_tuple(lims, keys, scores);
}

template <typename T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

template <typename Index>
void bind_persistence(py::class_<Index>& cls, io::Kind kind) {
  cls.def_property(
         "user_meta", [](const Index& self) { return py::bytes(self.user_meta); },
         [](Index& self, const py::bytes& b) { self.user_meta = std::string(b); })
      .def(
          "save",
          [kind](const Index& self, const std::string& path) {
            py::gil_scoped_release release;
            io::FileWriter w(kind);
            self.write(w);
            w.write_file(path);
          },
          py::arg("path"))
      .def("to_bytes",
           [kind](const Index& self) {
             std::vector<unsigned char> b;
             {
               py::gil_scoped_release release;
               io::FileWriter w(kind);
               self.write(w);
               b = w.to_bytes();
             }
             return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
           })
      .def_static(
          "load",
          [](const std::string& path, bool mmap) {
            auto reader = open_reader(path, mmap);
            py::gil_scoped_release release;
            return Index::read(reader);
          },
          py::arg("path"), py::arg("mmap") = false)
      .def_static("from_bytes", [](const py::bytes& b) {
        auto reader = bytes_reader(b);
        py::gil_scoped_release release;
        return Index::read(reader);
      });
}

}  // namespace

void bind_minhash(py::module_& m) {
  py::class_<MinHasher, std::shared_ptr<MinHasher>>(m, "MinHasher")
      .def(py::init([](std::size_t num_perm, std::uint64_t seed, const std::string& hashfunc, const std::string& scheme,
                       const std::string& method, std::vector<std::uint64_t> a, std::vector<std::uint64_t> b) {
             return std::make_shared<MinHasher>(num_perm, seed, parse_hashfunc(hashfunc), parse_scheme(scheme),
                                                parse_method(method), std::move(a), std::move(b));
           }),
           py::arg("num_perm"), py::arg("seed"), py::arg("hashfunc"), py::arg("scheme"), py::arg("method"),
           py::arg("a") = std::vector<std::uint64_t>{}, py::arg("b") = std::vector<std::uint64_t>{})
      .def_property_readonly("num_perm", &MinHasher::num_perm)
      .def_property_readonly("seed", &MinHasher::seed)
      .def_property_readonly("hashfunc", [](const MinHasher& h) { return hashfunc_name(h.hashfunc()); })
      .def_property_readonly("scheme", [](const MinHasher& h) { return scheme_name(h.scheme()); })
      .def_property_readonly("method", [](const MinHasher& h) { return method_name(h.method()); })
      .def_property_readonly("empty_value", &MinHasher::empty_value)
      .def("a", [](const MinHasher& h) { return to_array(h.a()); })
      .def("b", [](const MinHasher& h) { return to_array(h.b()); })
      .def(
          "empty",
          [](const MinHasher& h) {
            py::array_t<std::uint64_t> out(static_cast<py::ssize_t>(h.num_perm()));
            h.clear(out.mutable_data());
            return out;
          })
      .def(
          "update",
          [](const MinHasher& h, py::array_t<std::uint64_t, py::array::c_style> sig, const py::object& tokens,
             const py::object& shingle) {
            ANNFORGE_CHECK(sig.ndim() == 1 && static_cast<std::size_t>(sig.shape(0)) == h.num_perm(), ErrorKind::Value,
                           "state must hold num_perm values");
            const Shingle sh = shingle_of(shingle);
            Corpus c;
            if (sh.kind == Shingle::Kind::None)
              add_tokens(c, tokens);
            else
              add_text(c, tokens);
            c.end_doc();
            std::uint64_t* out = sig.mutable_data();
            py::gil_scoped_release release;
            h.update_document(c, 0, sh, out);
          },
          py::arg("state"), py::arg("tokens"), py::arg("shingle") = py::none())
      .def("hash_items",
           [](const MinHasher& h, const py::object& tokens) {
             Corpus c;
             add_tokens(c, tokens);
             c.end_doc();
             std::vector<std::uint64_t> hv;
             for (std::size_t i = 0; i + 1 < c.item_bytes.size(); ++i)
               hv.push_back(h.hash_item(c.bytes.data() + c.item_bytes[i],
                                        static_cast<std::size_t>(c.item_bytes[i + 1] - c.item_bytes[i])));
             return to_array(hv);
           })
      .def("update_hashes",
           [](const MinHasher& h, py::array_t<std::uint64_t, py::array::c_style> sig,
              py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast> hv) {
             ANNFORGE_CHECK(sig.ndim() == 1 && static_cast<std::size_t>(sig.shape(0)) == h.num_perm(), ErrorKind::Value,
                            "state must hold num_perm values");
             h.update_hashes(hv.data(), static_cast<std::size_t>(hv.size()), sig.mutable_data());
           })
      .def("densify",
           [](const MinHasher& h, const SigArray& sig) {
             py::array_t<std::uint64_t> out(static_cast<py::ssize_t>(h.num_perm()));
             ANNFORGE_CHECK(sig.ndim() == 1 && static_cast<std::size_t>(sig.shape(0)) == h.num_perm(), ErrorKind::Value,
                            "state must hold num_perm values");
             std::copy(sig.data(), sig.data() + h.num_perm(), out.mutable_data());
             h.densify(out.mutable_data());
             return out;
           })
      .def(
          "signatures",
          [](const MinHasher& h, const py::object& docs, const py::object& shingle, int num_threads) {
            const Shingle sh = shingle_of(shingle);
            if (sh.kind == Shingle::Kind::None && h.hashfunc() == HashFunc::XXH64) {
              // Pre-tokenised input: hash each token straight from its Python buffer (no copy into a
              // corpus; a short XXH64 costs about what the copy did), then sign without the GIL.
              if (PyUnicode_Check(docs.ptr()) || PyBytes_Check(docs.ptr()))
                fail(ErrorKind::Type, "docs must be a list of documents, not a single string");
              // Chunks of documents: hash one chunk under the GIL, sign it without; the hash buffer stays
              // small (cache-resident, no page faults) whatever the corpus size.
              PyObject* outer = PySequence_Fast(docs.ptr(), "docs must be a sequence or iterable of documents");
              if (!outer) throw py::error_already_set();
              py::object outer_guard = py::reinterpret_steal<py::object>(outer);
              const std::size_t n_docs = static_cast<std::size_t>(PySequence_Fast_GET_SIZE(outer));
              py::array_t<std::uint64_t> out({static_cast<py::ssize_t>(n_docs), static_cast<py::ssize_t>(h.num_perm())});
              std::uint64_t* o = out.mutable_data();
              constexpr std::size_t kChunkDocs = 2048;
              std::vector<std::uint64_t> hv, offsets;
              for (std::size_t start = 0; start < n_docs; start += kChunkDocs) {
                const std::size_t end = std::min(n_docs, start + kChunkDocs);
                hv.clear();
                offsets.assign(1, 0);
                const bool cmh = h.scheme() == Scheme::CMinHash;
                const std::uint64_t seed = h.seed();
                for (std::size_t d = start; d < end; ++d) {
                  py::handle doc = PySequence_Fast_GET_ITEM(outer, static_cast<Py_ssize_t>(d));
                  if (cmh)  // the same value as hash_item, one call less per token
                    for_each_token(doc, [&](const char* p, std::size_t n) { hv.push_back(token_hash(p, n, seed)); });
                  else
                    for_each_token(doc, [&](const char* p, std::size_t n) { hv.push_back(h.hash_item(p, n)); });
                  offsets.push_back(hv.size());
                }
                py::gil_scoped_release release;
                h.signatures_from_hashes(hv.data(), offsets.data(), end - start, o + start * h.num_perm(), num_threads);
              }
              return out;
            }
            Corpus c = build_corpus(docs, sh);
            py::array_t<std::uint64_t> out({static_cast<py::ssize_t>(c.num_docs()), static_cast<py::ssize_t>(h.num_perm())});
            std::uint64_t* o = out.mutable_data();
            {
              py::gil_scoped_release release;
              h.signatures(c, sh, o, num_threads);
            }
            return out;
          },
          py::arg("docs"), py::arg("shingle") = py::none(), py::arg("num_threads") = 0);

  m.def("minhash_hash64", [](const py::bytes& b, std::uint64_t seed) {
    const std::string s = b;
    return hash64(s.data(), s.size(), seed);
  });
  m.def("minhash_sha1", [](const py::bytes& b) {
    const std::string s = b;
    unsigned char d[20];
    sha1(s.data(), s.size(), d);
    return py::bytes(reinterpret_cast<const char*>(d), 20);
  });
  m.def("optimal_bands_rows", &optimal_bands_rows, py::arg("threshold"), py::arg("num_perm"), py::arg("fp_weight"),
        py::arg("fn_weight"));
  py::module_ testing = testing_module(m);
  testing.def("permute_level_check", [](const SigArray& hv, const SigArray& a, const SigArray& b) {
    // Test hook: the active kernel on raw (already reduced) hashes, from an all-ones start.
    const auto k = static_cast<std::size_t>(a.size());
    std::vector<std::uint64_t> hi(k), lo(k);
    for (std::size_t j = 0; j < k; ++j) {
      hi[j] = a.data()[j] >> 32;
      lo[j] = a.data()[j] & 0xffffffffu;
    }
    std::vector<std::uint64_t> sig(k, ~std::uint64_t{0});
    permute_mersenne_kernel()(hv.data(), static_cast<std::size_t>(hv.size()), hi.data(), lo.data(), b.data(), k,
                              sig.data());
    return to_array(sig);
  });
  // The label of each row is the smallest row of its group (see cluster/union_find.h).
  m.def("connected_groups", [](std::size_t n, const IdArray& first, const IdArray& second) {
    ANNFORGE_CHECK(first.size() == second.size(), ErrorKind::Value, "pair arrays differ in length");
    return to_array(cluster::connected_groups(n, first.data(), second.data(), static_cast<std::size_t>(first.size())));
  });

  py::class_<MinHashLSH> lsh(m, "MinHashLSH");
  lsh.def(py::init<std::size_t, std::size_t, std::size_t, double>(), py::arg("num_perm"), py::arg("bands"),
          py::arg("rows"), py::arg("threshold"))
      .def_property_readonly("num_perm", &MinHashLSH::num_perm)
      .def_property_readonly("bands", &MinHashLSH::bands)
      .def_property_readonly("rows", &MinHashLSH::rows)
      .def_property_readonly("threshold", &MinHashLSH::threshold)
      .def("__len__", &MinHashLSH::size)
      .def("__contains__", &MinHashLSH::contains)
      .def("keys", [](const MinHashLSH& s) { return to_array(s.keys()); })
      .def("memory_bytes", &MinHashLSH::memory_bytes)
      .def("signature",
           [](const MinHashLSH& s, idx_t key) { return to_array(s.signature(key)); })
      .def(
          "insert",
          [](MinHashLSH& s, const py::object& keys, const py::object& sigs, int num_threads) {
            std::size_t rows = 0;
            SigArray a = as_sigs(sigs, s.num_perm(), rows);
            IdArray k = as_ids(keys, rows, "keys");
            py::gil_scoped_release release;
            s.insert(k.data(), a.data(), rows, num_threads);
          },
          py::arg("keys"), py::arg("sigs"), py::arg("num_threads") = 0)
      .def("remove",
           [](MinHashLSH& s, const py::object& keys) {
             IdArray k = as_ids(keys, std::numeric_limits<std::size_t>::max(), "keys");
             py::gil_scoped_release release;
             return s.remove(k.data(), static_cast<std::size_t>(k.size()));
           })
      .def(
          "query",
          [](const MinHashLSH& s, const py::object& sigs, bool with_scores, double min_score, int num_threads) {
            std::size_t rows = 0;
            SigArray a = as_sigs(sigs, s.num_perm(), rows);
            QueryResult r;
            {
              py::gil_scoped_release release;
              r = s.query(a.data(), rows, with_scores, min_score, num_threads);
            }
            return query_tuple(r, with_scores);
          },
          py::arg("sigs"), py::arg("with_scores") = false, py::arg("min_score") = -1.0, py::arg("num_threads") = 0)
      .def(
          "query_keys",
          // One query, keys straight into a Python list: no CSR arrays, no thread hand-off. This is the
          // path of MinHashLSH.query(), called once per document in typical dedup loops.
          // expect_wide: 1 / 0 when the index holds 64-bit / 32-bit scheme signatures (-1: unknown); one
          // value tells them apart (a 64-bit scheme's minimum is below 2^32 with probability ~n / 2^29).
          // min_score: verified queries (keys scoring >= it, best first).
          [](const MinHashLSH& s, const py::object& sig, int expect_wide, std::optional<double> min_score) {
            std::size_t rows = 0;
            SigArray a = as_sigs(sig, s.num_perm(), rows);
            ANNFORGE_CHECK(rows == 1, ErrorKind::Value, "query() takes one signature; use query_batch() for ", rows);
            if (expect_wide >= 0 && (a.data()[0] > 0xffffffffu) != (expect_wide == 1))
              fail(ErrorKind::Value, "signatures of different MinHash schemes cannot share an index: this index holds ",
                   expect_wide ? "64-bit" : "32-bit", " signatures, the query is ", expect_wide ? "32-bit" : "64-bit",
                   " (scheme 'cminhash' became the default for hashfunc='xxh64'; pass scheme='mersenne61' to keep "
                   "producing the signatures of older annforge versions)");
            thread_local std::vector<std::uint32_t> scratch;
            thread_local std::vector<idx_t> keys;
            keys.clear();
            // A query takes well under a microsecond: run it under the GIL unless a writer holds or waits
            // for the lock, and wait for that without the GIL. The GIL is never needed while the lock is
            // held (the keys are copied out first), so this cannot deadlock against writers.
            if (!s.try_query_one(a.data(), scratch, keys, min_score)) {
              py::gil_scoped_release release;
              s.query_one(a.data(), scratch, keys, min_score);
            }
            py::list out(keys.size());
            for (std::size_t i = 0; i < keys.size(); ++i)
              PyList_SET_ITEM(out.ptr(), static_cast<py::ssize_t>(i), PyLong_FromLongLong(keys[i]));
            return out;
          },
          py::arg("sig"), py::arg("expect_wide") = -1, py::arg("min_score") = py::none())
      .def(
          "query_arrays",
          // Batch queries -> a list of int64 arrays, one per query, built here rather than by slicing
          // CSR arrays in Python (which cost more than the queries themselves).
          [](const MinHashLSH& s, const py::object& sigs, int num_threads) {
            std::size_t rows = 0;
            SigArray a = as_sigs(sigs, s.num_perm(), rows);
            QueryResult r;
            {
              py::gil_scoped_release release;
              r = s.query(a.data(), rows, false, -1.0, num_threads);
            }
            py::list out(rows);
            for (std::size_t i = 0; i < rows; ++i) {
              const auto begin = static_cast<std::size_t>(r.lims[i]), end = static_cast<std::size_t>(r.lims[i + 1]);
              py::array_t<idx_t> keys(static_cast<py::ssize_t>(end - begin));
              std::copy(r.keys.begin() + begin, r.keys.begin() + end, keys.mutable_data());
              PyList_SET_ITEM(out.ptr(), static_cast<py::ssize_t>(i), keys.release().ptr());
            }
            return out;
          },
          py::arg("sigs"), py::arg("num_threads") = 0)
      .def(
          "pairs",
          [](const MinHashLSH& s, double min_score, int num_threads) {
            PairResult r;
            {
              py::gil_scoped_release release;
              r = s.pairs(min_score, num_threads);
            }
            return py::make_tuple(to_array(r.first), to_array(r.second), to_array(r.scores));
          },
          py::arg("min_score") = -1.0, py::arg("num_threads") = 0);
  bind_persistence(lsh, io::Kind::MinHashLSH);

  py::class_<MinHashLSHForest> forest(m, "MinHashLSHForest");
  forest.def(py::init<std::size_t, std::size_t>(), py::arg("num_perm"), py::arg("l"))
      .def_property_readonly("num_perm", &MinHashLSHForest::num_perm)
      .def_property_readonly("l", &MinHashLSHForest::trees)
      .def_property_readonly("depth", &MinHashLSHForest::depth)
      .def("__len__", &MinHashLSHForest::size)
      .def("__contains__", &MinHashLSHForest::contains)
      .def("keys", [](const MinHashLSHForest& s) { return to_array(s.keys()); })
      .def("memory_bytes", &MinHashLSHForest::memory_bytes)
      .def(
          "insert",
          [](MinHashLSHForest& s, const py::object& keys, const py::object& sigs) {
            std::size_t rows = 0;
            SigArray a = as_sigs(sigs, s.num_perm(), rows);
            IdArray k = as_ids(keys, rows, "keys");
            py::gil_scoped_release release;
            s.insert(k.data(), a.data(), rows);
          },
          py::arg("keys"), py::arg("sigs"))
      .def("remove",
           [](MinHashLSHForest& s, const py::object& keys) {
             IdArray k = as_ids(keys, std::numeric_limits<std::size_t>::max(), "keys");
             return s.remove(k.data(), static_cast<std::size_t>(k.size()));
           })
      .def(
          "index",
          [](MinHashLSHForest& s, int num_threads) {
            py::gil_scoped_release release;
            s.index(num_threads);
          },
          py::arg("num_threads") = 0)
      .def(
          "query",
          [](MinHashLSHForest& s, const py::object& sigs, std::size_t k, int num_threads) {
            std::size_t rows = 0;
            SigArray a = as_sigs(sigs, s.num_perm(), rows);
            QueryResult r;
            {
              py::gil_scoped_release release;
              r = s.query(a.data(), rows, k, num_threads);
            }
            return query_tuple(r, true);
          },
          py::arg("sigs"), py::arg("k"), py::arg("num_threads") = 0);
  bind_persistence(forest, io::Kind::MinHashLSHForest);
}

}  // namespace annforge::py_bindings
