// The dense linear algebra routing/ needs, in double, through LAPACK
// (Debian's OpenBLAS carries it).
#pragma once

#include <vector>

namespace tessera::routing {

// Eigen-decomposition of a symmetric n×n matrix a (row- or column-major:
// symmetric), LAPACK dsyev: returns the eigenvalues ascending; a is
// overwritten with the eigenvectors, column j (a[j·n .. j·n + n)) for
// eigenvalue j. `what` names the caller in an Error.
std::vector<double> symmetric_eigen(std::vector<double>& a, int n, const char* what);

}  // namespace tessera::routing
