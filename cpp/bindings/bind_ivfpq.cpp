// IVFPQIndex bindings, plus annforge.kmeans, private controls that pin the fast-scan SIMD level (tests,
// bench/bench_ivfpq.py) and, in `_core._testing`, hooks that run the fast-scan kernels on raw blocks and
// OPQ's parts on their own.
#include "annforge/cluster/kmeans.h"
#include "annforge/codec/opq.h"
#include "annforge/codec/pq.h"
#include "annforge/codec/pq4_fastscan.h"
#include "annforge/index/ivfpq.h"
#include "annforge/parallel/executor.h"
#include "annforge/util/topk.h"
#include "bind_index.h"

#include <cmath>

namespace annforge::py_bindings {

namespace {

// The fast-scan kernel of the AVX-512 level for CPUs with VBMI + VNNI, as the test hooks name it.
constexpr const char* kVbmiScanName = "avx512-vbmi";

RefineKind refine_from_py(const py::object& refine) {
  if (refine.is_none()) return RefineKind::None;
  if (!py::isinstance<py::str>(refine)) fail(ErrorKind::Type, "refine must be a string or None");
  const auto name = py::cast<std::string>(refine);
  if (name == "none") fail(ErrorKind::Value, "refine='none' is spelt refine=None");
  return parse_refine(name);
}

py::array_t<float> float_matrix(const std::vector<float>& v, std::size_t rows, std::size_t cols) {
  py::array_t<float> out({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

void bind_kmeans(py::module_& m) {
  m.def(
      "kmeans",
      [](const py::object& x, long long k, int niter, std::uint64_t seed, const std::string& init,
         long long max_points_per_centroid, bool spherical, int num_threads, const py::object& accelerator) {
        if (k < 1) fail(ErrorKind::Value, "k must be >= 1, got ", k);
        if (niter < 0) fail(ErrorKind::Value, "niter must be >= 0, got ", niter);
        if (max_points_per_centroid < 0)
          fail(ErrorKind::Value, "max_points_per_centroid must be >= 0, got ", max_points_per_centroid);
        py::array arr = py::array::ensure(x);
        if (!arr || arr.ndim() != 2) fail(ErrorKind::Value, "x must be a 2-D array [n, dim]");
        const auto d = static_cast<std::size_t>(arr.shape(1));
        if (d == 0) fail(ErrorKind::Value, "x must have at least one column");
        MatrixView v = as_matrix(x, d, "x");
        cluster::KMeansOptions opt;
        opt.niter = niter;
        opt.seed = seed;
        if (init == "kmeans++") opt.init = cluster::KMeansInit::KMeansPlusPlus;
        else if (init == "random") opt.init = cluster::KMeansInit::Random;
        else fail(ErrorKind::Value, "init must be 'kmeans++' or 'random', got '", init, "'");
        opt.max_points_per_centroid = static_cast<std::size_t>(max_points_per_centroid);
        opt.spherical = spherical;
        opt.num_threads = num_threads;
        opt.accelerator = accelerator_from(accelerator);
        (void)parallel::resolve_threads(num_threads);
        for (std::size_t i = 0; i < v.rows * d; ++i)
          if (!std::isfinite(v.data[i])) fail(ErrorKind::Value, "x contains NaN or infinity at row ", i / d);
        cluster::KMeansResult res;
        {
          py::gil_scoped_release release;
          res = cluster::kmeans(v.data, v.rows, d, static_cast<std::size_t>(k), opt);
        }
        py::array_t<std::int32_t> assignment(static_cast<py::ssize_t>(res.assignment.size()));
        std::copy(res.assignment.begin(), res.assignment.end(), assignment.mutable_data());
        py::array_t<double> objective(static_cast<py::ssize_t>(res.objective.size()));
        std::copy(res.objective.begin(), res.objective.end(), objective.mutable_data());
        return py::make_tuple(float_matrix(res.centroids, static_cast<std::size_t>(k), d), assignment, objective,
                              res.empty_splits);
      },
      py::arg("x"), py::arg("k"), py::arg("niter") = 20, py::arg("seed") = 0, py::arg("init") = "kmeans++",
      py::arg("max_points_per_centroid") = 256, py::arg("spherical") = false, py::arg("num_threads") = 0,
      py::arg("accelerator") = py::none());

  m.def("_pq4_scan_levels", [] {
    py::list out;
    for (auto l : {simd::Level::Scalar, simd::Level::AVX2, simd::Level::AVX512})
      if (codec::pq4::scan_kernel_for(l)) out.append(simd::level_name(l));
    if (codec::pq4::vbmi_scan_available()) out.append(kVbmiScanName);
    return out;
  }, "SIMD levels the 4-bit fast-scan kernel can run at here ('avx512-vbmi': AVX-512 with VBMI + VNNI).");
  m.def("_pq4_scan_level", [] {
    return codec::pq4::vbmi_scan_active() ? std::string(kVbmiScanName)
                                          : std::string(simd::level_name(codec::pq4::scan_level()));
  });
  m.def(
      "_set_pq4_scan_level",
      [](const py::object& level) {
        if (level.is_none()) {
          codec::pq4::set_scan_level_override(-1);
          codec::pq4::set_vbmi_scan_override(-1);
          return;
        }
        const auto name = py::cast<std::string>(level);
        const bool vbmi = name == kVbmiScanName;
        ANNFORGE_CHECK(!vbmi || codec::pq4::vbmi_scan_available(), ErrorKind::Value,
                       "fast-scan level 'avx512-vbmi' is not available on this CPU/build");
        codec::pq4::set_scan_level_override(
            static_cast<int>(vbmi ? simd::Level::AVX512 : simd::parse_level(name.c_str())));
        codec::pq4::set_vbmi_scan_override(vbmi ? 1 : 0);
      },
      py::arg("level"),
      "Pin the fast-scan kernel to a level or 'avx512-vbmi' (tests); None follows the active level again.");
  // Test-only hooks on raw fast-scan blocks and the top-k selection.
  py::module_ testing = testing_module(m);
  // OPQ's parts (codec/opq.h, codec/pq.h) on their own.
  testing.def(
      "_pq_fit_reconstruct",
      [](const py::object& x, std::size_t m_sub, std::size_t nbits, std::uint64_t seed, int num_threads) {
        MatrixView v = as_matrix(x, 0, "x");
        codec::ProductQuantizer pq(v.cols, m_sub, nbits);
        std::vector<float> recon;
        {
          py::gil_scoped_release release;
          recon = pq.fit_reconstruct(v.data, v.rows, seed, num_threads);
        }
        return float_matrix(recon, v.rows, v.cols);
      },
      py::arg("x"), py::arg("m"), py::arg("nbits"), py::arg("seed") = 0, py::arg("num_threads") = 0,
      "Trains a product quantizer on x and returns x encoded and decoded again.");
  testing.def(
      "_opq_rotation",
      [](const py::object& x, std::size_t m_sub, std::size_t nbits, std::uint64_t seed, int niter,
         std::size_t max_points, int num_threads) {
        MatrixView v = as_matrix(x, 0, "x");
        codec::OPQOptions options;
        options.niter = niter;
        options.max_points = max_points;
        options.seed = seed;
        options.num_threads = num_threads;
        std::vector<float> r;
        {
          py::gil_scoped_release release;
          r = codec::train_opq_rotation(v.data, v.rows, v.cols, m_sub, nbits, options);
        }
        return float_matrix(r, v.cols, v.cols);
      },
      py::arg("x"), py::arg("m"), py::arg("nbits"), py::arg("seed") = 0, py::arg("niter") = 8,
      py::arg("max_points") = 16384, py::arg("num_threads") = 0, "codec::train_opq_rotation.");
  testing.def(
      "_orthogonal_polar_factor",
      [](const py::array_t<double, py::array::c_style | py::array::forcecast>& a) {
        ANNFORGE_CHECK(a.ndim() == 2 && a.shape(0) == a.shape(1), ErrorKind::Value, "a must be a square matrix");
        const auto d = static_cast<std::size_t>(a.shape(0));
        const std::vector<double> r = codec::orthogonal_polar_factor(a.data(), d);
        py::array_t<double> out({a.shape(0), a.shape(1)});
        std::copy(r.begin(), r.end(), out.mutable_data());
        return out;
      },
      py::arg("a"), "codec::orthogonal_polar_factor: U V^T of a = U S V^T.");
  testing.def(
      "_pq4_scan_raw",
      [](const py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>& blocks, std::size_t padded_m,
         const py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>& table) {
        ANNFORGE_CHECK(padded_m >= 2 && padded_m % 2 == 0 && static_cast<std::size_t>(table.size()) == padded_m * 16 &&
                           static_cast<std::size_t>(blocks.size()) % (padded_m * 16) == 0,
                       ErrorKind::Value, "bad fast-scan block / table shapes");
        const std::size_t nblocks = static_cast<std::size_t>(blocks.size()) / (padded_m * 16);
        py::array_t<std::uint16_t> out(static_cast<py::ssize_t>(nblocks * codec::pq4::kBlock));
        codec::pq4::scan_kernel()(blocks.data(), nblocks, padded_m, table.data(), out.mutable_data());
        return out;
      },
      py::arg("blocks"), py::arg("padded_m"), py::arg("table"),
      "The fast-scan kernel of the pinned level on raw blocks (tests): 16-bit sums, 32 per block.");
  testing.def(
      "_pq4_scan_multi_raw",
      [](const py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>& blocks, std::size_t padded_m,
         const py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>& tables) -> py::object {
        ANNFORGE_CHECK(padded_m >= 2 && padded_m % 2 == 0 && tables.ndim() == 2 &&
                           static_cast<std::size_t>(tables.shape(1)) == padded_m * 16 &&
                           static_cast<std::size_t>(blocks.size()) % (padded_m * 16) == 0,
                       ErrorKind::Value, "bad fast-scan block / table shapes");
        const auto multi = codec::pq4::scan_multi_kernel();
        if (!multi) return py::none();
        const std::size_t nblocks = static_cast<std::size_t>(blocks.size()) / (padded_m * 16);
        const std::size_t n = static_cast<std::size_t>(tables.shape(0));
        py::array_t<std::uint16_t> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(nblocks * 32)});
        std::vector<const std::uint8_t*> t(n);
        std::vector<std::uint16_t*> o(n);
        for (std::size_t i = 0; i < n; ++i) {
          t[i] = tables.data() + i * padded_m * 16;
          o[i] = out.mutable_data() + i * nblocks * 32;
        }
        multi(blocks.data(), nblocks, padded_m, t.data(), n, o.data());
        return std::move(out);
      },
      py::arg("blocks"), py::arg("padded_m"), py::arg("tables"),
      "The several-tables fast-scan kernel of the pinned level (tests), or None where the level has none.");
  testing.def(
      "_kth_smallest",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> values, std::size_t k) {
        const auto n = static_cast<std::size_t>(values.size());
        ANNFORGE_CHECK(k < n, ErrorKind::Value, "k must be below the number of values");
        std::vector<float> v(values.data(), values.data() + n), scratch(n);
        return kth_smallest(v.data(), scratch.data(), n, k);
      },
      py::arg("values"), py::arg("k"), "The selection TopKBuffer uses (tests).");
  testing.def(
      "_topk_buffer",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> dist,
         py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> labels, std::size_t k) {
        ANNFORGE_CHECK(dist.size() == labels.size(), ErrorKind::Value, "one label per distance");
        TopKBuffer buffer(k);
        for (py::ssize_t i = 0; i < dist.size(); ++i)  // offered as the scans do: only what can still enter
          if (dist.data()[i] <= buffer.threshold()) buffer.push(dist.data()[i], labels.data()[i]);
        const auto& best = buffer.sorted();
        py::array_t<float> d(static_cast<py::ssize_t>(best.size()));
        py::array_t<std::int64_t> l(static_cast<py::ssize_t>(best.size()));
        for (std::size_t i = 0; i < best.size(); ++i) {
          d.mutable_data()[i] = best[i].first;
          l.mutable_data()[i] = best[i].second;
        }
        return py::make_tuple(d, l);
      },
      py::arg("dist"), py::arg("labels"), py::arg("k"), "Offers a stream to a TopKBuffer (tests).");
  testing.def(
      "_pq4_below_raw",
      [](const py::array_t<std::uint16_t, py::array::c_style | py::array::forcecast>& acc,
         const py::array_t<std::uint16_t, py::array::c_style | py::array::forcecast>& bounds) {
        const std::size_t nblocks = static_cast<std::size_t>(acc.size()) / 32;
        ANNFORGE_CHECK(acc.size() % 32 == 0 && static_cast<std::size_t>(bounds.size()) == nblocks, ErrorKind::Value,
                       "sums come in blocks of 32, with one bound per block");
        py::array_t<std::uint32_t> out(static_cast<py::ssize_t>(nblocks));
        codec::pq4::below_kernel()(acc.data(), nblocks, bounds.data(), out.mutable_data());
        return out;
      },
      py::arg("acc"), py::arg("bounds"), "The threshold-mask kernel of the pinned level (tests).");
}

}  // namespace

void bind_ivfpq(py::module_& m) {
  bind_kmeans(m);
  py::class_<IVFPQIndex> cls(m, "IVFPQIndex");
  cls.def(py::init([](std::size_t dim, std::size_t nlist, std::size_t m_sub, std::size_t nbits,
                      const std::string& metric, const py::object& refine, std::uint64_t seed, bool residual,
                      bool opq) {
            const RefineKind kind = refine_from_py(refine);
            const Metric met = parse_metric(metric);
            return std::make_unique<IVFPQIndex>(dim, nlist, m_sub, nbits, met, kind, seed, residual, opq);
          }),
          py::arg("dim"), py::arg("nlist"), py::arg("m"), py::arg("nbits") = 8, py::arg("metric") = "l2",
          py::arg("refine") = "f32", py::arg("seed") = 0, py::arg("residual") = true, py::arg("opq") = false);
  bind_vector_index_methods<IVFPQIndex>(cls);
  cls.def(
         "train",
         [](IVFPQIndex& self, const py::object& x, int num_threads, const py::object& accelerator) {
           MatrixView v = as_matrix(x, self.dim(), "training vectors");
           auto* acc = accelerator_from(accelerator);
           py::gil_scoped_release release;
           self.train(v.data, v.rows, num_threads, acc);
         },
         py::arg("x"), py::arg("num_threads") = 0, py::arg("accelerator") = py::none())
      .def_property_readonly("is_trained", &IVFPQIndex::is_trained)
      .def_property_readonly("nlist", &IVFPQIndex::nlist)
      .def_property_readonly("m", &IVFPQIndex::m)
      .def_property_readonly("nbits", &IVFPQIndex::nbits)
      .def_property_readonly("residual", &IVFPQIndex::residual)
      .def_property_readonly("refine",
                             [](const IVFPQIndex& self) -> py::object {
                               if (self.refine() == RefineKind::None) return py::none();
                               return py::str(refine_name(self.refine()));
                             })
      .def_property_readonly("code_bytes", &IVFPQIndex::code_bytes)
      .def_property_readonly("refine_bytes", &IVFPQIndex::refine_bytes)
      .def("list_sizes",
           [](const IVFPQIndex& self) {
             const auto s = self.list_sizes();
             py::array_t<std::int64_t> out(static_cast<py::ssize_t>(s.size()));
             std::copy(s.begin(), s.end(), out.mutable_data());
             return out;
           })
      .def("coarse_centroids",
           [](const IVFPQIndex& self) {
             const auto c = self.coarse_centroids();
             return float_matrix(c, c.size() / self.dim(), self.dim());
           })
      .def("rotation",
           [](const IVFPQIndex& self) -> py::object {
             const auto r = self.rotation();
             if (r.empty()) return py::none();
             return float_matrix(r, self.dim(), self.dim());
           })
      .def(
          "set_rotation",
          [](IVFPQIndex& self, const py::object& r) {
            MatrixView v = as_matrix(r, self.dim(), "rotation");
            if (v.rows != self.dim()) fail(ErrorKind::Value, "rotation must be a [dim, dim] matrix");
            self.set_rotation(v.data);
          },
          py::arg("rotation"))
      .def("_layout",
           [](const IVFPQIndex& self) {
             IVFPQIndex::Layout lay;
             {
               py::gil_scoped_release release;
               lay = self.layout();
             }
             auto arr = [](const auto& v) {
               using T = typename std::decay_t<decltype(v)>::value_type;
               py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
               std::copy(v.begin(), v.end(), a.mutable_data());
               return a;
             };
             py::dict out;
             out["rotation"] = arr(lay.rotation);
             out["centroids"] = arr(lay.centroids);
             out["codebooks"] = arr(lay.codebooks);
             out["code_norms"] = arr(lay.code_norms);
             out["sq8_offset"] = arr(lay.sq8_offset);
             out["sq8_scale"] = arr(lay.sq8_scale);
             out["list_offsets"] = arr(lay.list_offsets);
             out["codes"] = arr(lay.codes);
             out["ids"] = arr(lay.ids);
             out["norm_terms"] = arr(lay.norm_terms);
             out["refine"] = arr(lay.refine);
             return out;
           },
           "The trained state as flat arrays, lists concatenated (what to_gpu() uploads).")
      .def_static(
          "load", [](const std::string& path, bool mmap) { return IVFPQIndex::read(open_reader(path, mmap)); },
          py::arg("path"), py::arg("mmap") = false)
      .def_static("from_bytes", [](const py::bytes& b) { return IVFPQIndex::read(bytes_reader(b)); });
}

}  // namespace annforge::py_bindings
