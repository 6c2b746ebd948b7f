// Optimized product quantization (OPQ): an orthonormal rotation R, applied as x -> R x before a
// product quantizer, that lowers its reconstruction error by spreading variance evenly over the
// sub-spaces. Non-parametric OPQ (Ge, He, Ke & Sun, CVPR 2013): alternate a PQ fit on the rotated
// sample and the orthogonal Procrustes step R = argmin ||R X - Y|| over orthonormal R (Y: the PQ
// reconstruction), whose answer is the orthogonal polar factor of sum_i y_i x_i^T.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace annforge::codec {

struct OPQOptions {
  int niter = 8;                    // alternations of PQ fit and Procrustes step (>= 1)
  std::size_t max_points = 16384;   // training sample: this many distinct rows, seeded (0 = all)
  std::uint64_t seed = 0;           // sample choice; the PQ fit of iteration t is seeded seed + t
  int num_threads = 0;              // for the PQ fits
};

// R (d x d, row-major, orthonormal rows) for a product quantizer of m sub-spaces of 2^nbits centres,
// trained on x (n rows of d floats, finite). ValueError when d % m != 0, nbits is not 4 or 8,
// n < 2^nbits, niter < 1 or x holds NaN / infinity. Deterministic for a seed (any thread count).
std::vector<float> train_opq_rotation(const float* x, std::size_t n, std::size_t d, std::size_t m, std::size_t nbits,
                                      const OPQOptions& options = {});

// The orthogonal polar factor U V^T of the d x d row-major matrix a = U S V^T (its SVD): the
// orthonormal R maximising trace(R^T a). One-sided Jacobi SVD in double precision; a rank-deficient
// a gets its missing singular vectors completed to an orthonormal basis (R is then one of the
// maximisers). ValueError on non-finite entries.
std::vector<double> orthogonal_polar_factor(const double* a, std::size_t d);

}  // namespace annforge::codec
