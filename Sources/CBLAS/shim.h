// OpenBLAS's CBLAS interface (cblas_sgemm, …) plus openblas_get_corename / openblas_set_num_threads.
#include <cblas.h>
// mallopt, to keep large tensor buffers on the heap (Glibc's Swift module does not export malloc.h).
#include <malloc.h>
// LAPACK's SVD (column-major; the trailing size_t is gfortran's hidden length of `jobz`), from OpenBLAS.
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u, const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork, int *iwork, int *info, size_t jobz_len);
