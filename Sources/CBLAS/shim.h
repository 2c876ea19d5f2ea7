// OpenBLAS's CBLAS interface (cblas_sgemm, …) plus openblas_get_corename / openblas_set_num_threads.
#include <cblas.h>
