// OpenBLAS's CBLAS interface (cblas_sgemm, …) plus openblas_get_corename / openblas_set_num_threads.
#include <cblas.h>
// mallopt, to keep large tensor buffers on the heap (Glibc's Swift module does not export malloc.h).
#include <malloc.h>
