// oneDNN's C API (Debian's libdnnl-dev: bf16 matrix products for inference) and the two pieces of it
// that are macros Swift cannot import. Debian's oneDNN runs on OpenMP (libgomp, loaded with it);
// SwiftPEFT calls it from its own threads with one OpenMP thread each (`omp_set_num_threads`, looked
// up at run time, so the build needs no libgomp development link).
#include <dnnl.h>

static inline void *swiftpeft_dnnl_allocate(void) { return DNNL_MEMORY_ALLOCATE; }
enum { swiftpeft_dnnl_arg_src = DNNL_ARG_SRC, swiftpeft_dnnl_arg_weights = DNNL_ARG_WEIGHTS,
       swiftpeft_dnnl_arg_dst = DNNL_ARG_DST, swiftpeft_dnnl_arg_from = DNNL_ARG_FROM,
       swiftpeft_dnnl_arg_to = DNNL_ARG_TO, swiftpeft_dnnl_arg_scratchpad = DNNL_ARG_SCRATCHPAD };
