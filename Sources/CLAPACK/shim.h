// The LAPACK routines SwiftPEFT calls, from OpenBLAS (which bundles LAPACK; Debian's libopenblas-dev).
// LAPACK's SVD (column-major; the trailing size_t is gfortran's hidden length of `jobz`).
#include <stddef.h>
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u, const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork, int *iwork, int *info, size_t jobz_len);
