#include "routing/linalg.h"

#include <algorithm>

#include "runtime/common/error.h"

extern "C" {
void dsyev_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
            double* work, const int* lwork, int* info, size_t jobz_len, size_t uplo_len);
}

namespace tessera::routing {

std::vector<double> symmetric_eigen(std::vector<double>& a, int n, const char* what) {
  if (static_cast<int64_t>(a.size()) != static_cast<int64_t>(n) * n)
    throw Error(str(what, ": a ", a.size(), "-element matrix is not ", n, "×", n));
  std::vector<double> w(static_cast<size_t>(n));
  if (n == 0) return w;
  int info = 0, lwork = -1;
  double size = 0;
  dsyev_("V", "U", &n, a.data(), &n, w.data(), &size, &lwork, &info, 1, 1);
  if (info != 0) throw Error(str(what, ": LAPACK dsyev failed (info ", info, ")"));
  lwork = std::max(1, static_cast<int>(size));
  std::vector<double> work(static_cast<size_t>(lwork));
  dsyev_("V", "U", &n, a.data(), &n, w.data(), work.data(), &lwork, &info, 1, 1);
  if (info != 0) throw Error(str(what, ": LAPACK dsyev failed (info ", info, ")"));
  return w;
}

}  // namespace tessera::routing
