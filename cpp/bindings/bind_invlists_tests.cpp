// Test hook (in `annforge._core._testing`): the probe scan of invlists/ on lists given as NumPy arrays
// (tests/test_invlists.py checks its candidates against every distance computed in NumPy).
//   _core._testing._probe_scan_lists(codes, lut, offsets, k, norm_terms=None, remove=None)
//       -> (locations, distances, quantized table, bias, scale)
#include "annforge/codec/pq4_fastscan.h"
#include "annforge/invlists/inverted_lists.h"
#include "annforge/invlists/probe_scan.h"
#include "bind_common.h"

namespace annforge::py_bindings {

using U8Matrix = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>;

void bind_invlists_tests(py::module_& testing) {
  testing.def(
      "_probe_scan_lists",
      [](const py::list& codes, const FloatArray& lut, const FloatArray& offsets, std::size_t k,
         const py::object& norm_terms, const py::object& remove) {
        const std::size_t nl = codes.size();
        ANNFORGE_CHECK(nl >= 1 && lut.ndim() == 2 && lut.shape(1) == 16 && static_cast<std::size_t>(offsets.size()) == nl,
                       ErrorKind::Value, "codes: one (n, m) uint8 array per list; lut (m, 16); one offset per list");
        const auto m = static_cast<std::size_t>(lut.shape(0));
        const bool with_terms = !norm_terms.is_none();
        invlists::InvertedLists lists(nl, m, 4, 0, with_terms);
        idx_t next_id = 0;
        for (std::size_t l = 0; l < nl; ++l) {
          const auto c = py::cast<U8Matrix>(codes[l]);
          ANNFORGE_CHECK(c.ndim() == 2 && static_cast<std::size_t>(c.shape(1)) == m, ErrorKind::Value,
                         "list ", l, ": codes must be (n, m)");
          FloatArray terms;
          if (with_terms) {
            terms = py::cast<FloatArray>(py::list(norm_terms)[l]);
            ANNFORGE_CHECK(terms.size() == c.shape(0), ErrorKind::Value, "list ", l, ": one norm term per row");
          }
          for (py::ssize_t i = 0; i < c.shape(0); ++i)
            lists.append(l, next_id++, c.data() + i * m, with_terms ? terms.data()[i] : 0.0f);
        }
        if (!remove.is_none())
          for (const py::handle id : py::list(remove)) lists.remove(py::cast<idx_t>(id));
        invlists::ProbeQuery q;
        codec::pq4::quantize_lut(lut.data(), m, q.qlut, codec::pq4::lut_kernels());
        q.heap.reset(k);
        invlists::ListScanner scanner(4);
        for (std::size_t l = 0; l < nl; ++l) scanner.scan(lists, l, offsets.data()[l], q, nullptr, nullptr);
        const auto& best = q.heap.sorted();
        py::array_t<std::int64_t> loc(static_cast<py::ssize_t>(best.size()));
        py::array_t<float> dist(static_cast<py::ssize_t>(best.size()));
        for (std::size_t i = 0; i < best.size(); ++i) {
          loc.mutable_data()[i] = best[i].second;
          dist.mutable_data()[i] = best[i].first;
        }
        const std::size_t pm = codec::pq4::padded_m(m);
        py::array_t<std::uint8_t> table({static_cast<py::ssize_t>(pm), static_cast<py::ssize_t>(16)});
        std::copy(q.qlut.table.begin(), q.qlut.table.end(), table.mutable_data());
        return py::make_tuple(loc, dist, table, q.qlut.bias, q.qlut.scale);
      },
      py::arg("codes"), py::arg("lut"), py::arg("offsets"), py::arg("k"), py::arg("norm_terms") = py::none(),
      py::arg("remove") = py::none(),
      "Stores the lists (ids 0, 1, ... in order), removes `remove`, and scans them in order for one query "
      "with the float table `lut` and one offset per list, as IVF-PQ / ScaNN do (tests).");
}

}  // namespace annforge::py_bindings
