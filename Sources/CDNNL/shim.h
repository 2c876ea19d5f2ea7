// oneDNN's C API (Debian's libdnnl-dev: bf16 matrix products for inference) and the two pieces of it
// that are macros Swift cannot import. Debian's oneDNN runs on OpenMP (libgomp, loaded with it);
// SwiftPEFT calls it from its own threads with one OpenMP thread each (`omp_set_num_threads`, looked
// up at run time, so the build needs no libgomp development link).
#include <dnnl.h>
#include <stdlib.h>

static inline void *swiftpeft_dnnl_allocate(void) { return DNNL_MEMORY_ALLOCATE; }
enum { swiftpeft_dnnl_arg_src = DNNL_ARG_SRC, swiftpeft_dnnl_arg_weights = DNNL_ARG_WEIGHTS,
       swiftpeft_dnnl_arg_dst = DNNL_ARG_DST, swiftpeft_dnnl_arg_from = DNNL_ARG_FROM,
       swiftpeft_dnnl_arg_to = DNNL_ARG_TO, swiftpeft_dnnl_arg_scratchpad = DNNL_ARG_SCRATCHPAD };

// Memory descriptors and the matmul's primitive descriptor, the same to Swift with oneDNN 2
// (Debian 12: a memory descriptor is a struct, an op descriptor makes the primitive descriptor)
// and oneDNN 3 (Debian 13: a memory descriptor is a handle, made and destroyed by the library).
// A swiftpeft_dnnl_md is owned by whoever made it (swiftpeft_dnnl_md_destroy); Swift sees an
// OpaquePointer with either version.
typedef struct swiftpeft_dnnl_md_s *swiftpeft_dnnl_md;

#if DNNL_VERSION_MAJOR >= 3
#define SWIFTPEFT_DNNL_MD(md) ((const_dnnl_memory_desc_t)(md))

static inline dnnl_status_t swiftpeft_dnnl_md_create(swiftpeft_dnnl_md *md, int ndims, const dnnl_dim_t *dims,
                                                     dnnl_data_type_t type, const dnnl_dim_t *strides) {
    dnnl_memory_desc_t d = NULL;
    dnnl_status_t s = dnnl_memory_desc_create_with_strides(&d, ndims, dims, type, strides);
    *md = (swiftpeft_dnnl_md)d;
    return s;
}
/// A descriptor of any layout (dnnl_format_tag_any), for oneDNN to choose.
static inline dnnl_status_t swiftpeft_dnnl_md_create_any(swiftpeft_dnnl_md *md, int ndims, const dnnl_dim_t *dims,
                                                         dnnl_data_type_t type) {
    dnnl_memory_desc_t d = NULL;
    dnnl_status_t s = dnnl_memory_desc_create_with_tag(&d, ndims, dims, type, dnnl_format_tag_any);
    *md = (swiftpeft_dnnl_md)d;
    return s;
}
static inline void swiftpeft_dnnl_md_destroy(swiftpeft_dnnl_md md) {
    if (md) dnnl_memory_desc_destroy((dnnl_memory_desc_t)md);
}
/// A copy, owned by the caller, of the descriptor `what` of a primitive descriptor.
static inline dnnl_status_t swiftpeft_dnnl_query_md(swiftpeft_dnnl_md *md, const_dnnl_primitive_desc_t pd, dnnl_query_t what) {
    const_dnnl_memory_desc_t q = dnnl_primitive_desc_query_md(pd, what, 0);
    dnnl_memory_desc_t d = NULL;
    dnnl_status_t s = q ? dnnl_memory_desc_clone(&d, q) : dnnl_invalid_arguments;
    *md = (swiftpeft_dnnl_md)d;
    return s;
}
/// A matmul without bias.
static inline dnnl_status_t swiftpeft_dnnl_matmul_pd_create(dnnl_primitive_desc_t *pd, dnnl_engine_t engine,
        swiftpeft_dnnl_md src, swiftpeft_dnnl_md weights, swiftpeft_dnnl_md dst, const_dnnl_primitive_attr_t attr) {
    return dnnl_matmul_primitive_desc_create(pd, engine, SWIFTPEFT_DNNL_MD(src), SWIFTPEFT_DNNL_MD(weights), NULL,
                                             SWIFTPEFT_DNNL_MD(dst), attr);
}
/// dst += scale * dst's old value (a sum post-op in the output's data type).
static inline dnnl_status_t swiftpeft_dnnl_post_ops_append_sum(dnnl_post_ops_t ops, float scale) {
    return dnnl_post_ops_append_sum(ops, scale, 0, dnnl_data_type_undef);
}
#else
#define SWIFTPEFT_DNNL_MD(md) ((const dnnl_memory_desc_t *)(md))

static inline dnnl_status_t swiftpeft_dnnl_md_create(swiftpeft_dnnl_md *md, int ndims, const dnnl_dim_t *dims,
                                                     dnnl_data_type_t type, const dnnl_dim_t *strides) {
    dnnl_memory_desc_t *d = (dnnl_memory_desc_t *)malloc(sizeof *d);
    dnnl_status_t s = d ? dnnl_memory_desc_init_by_strides(d, ndims, dims, type, strides) : dnnl_out_of_memory;
    if (s != dnnl_success) { free(d); d = NULL; }
    *md = (swiftpeft_dnnl_md)d;
    return s;
}
static inline dnnl_status_t swiftpeft_dnnl_md_create_any(swiftpeft_dnnl_md *md, int ndims, const dnnl_dim_t *dims,
                                                         dnnl_data_type_t type) {
    dnnl_memory_desc_t *d = (dnnl_memory_desc_t *)malloc(sizeof *d);
    dnnl_status_t s = d ? dnnl_memory_desc_init_by_tag(d, ndims, dims, type, dnnl_format_tag_any) : dnnl_out_of_memory;
    if (s != dnnl_success) { free(d); d = NULL; }
    *md = (swiftpeft_dnnl_md)d;
    return s;
}
static inline void swiftpeft_dnnl_md_destroy(swiftpeft_dnnl_md md) { free(md); }
static inline dnnl_status_t swiftpeft_dnnl_query_md(swiftpeft_dnnl_md *md, const_dnnl_primitive_desc_t pd, dnnl_query_t what) {
    const dnnl_memory_desc_t *q = dnnl_primitive_desc_query_md(pd, what, 0);
    dnnl_memory_desc_t *d = q ? (dnnl_memory_desc_t *)malloc(sizeof *d) : NULL;
    if (d) *d = *q;
    *md = (swiftpeft_dnnl_md)d;
    return d ? dnnl_success : q ? dnnl_out_of_memory : dnnl_invalid_arguments;
}
static inline dnnl_status_t swiftpeft_dnnl_matmul_pd_create(dnnl_primitive_desc_t *pd, dnnl_engine_t engine,
        swiftpeft_dnnl_md src, swiftpeft_dnnl_md weights, swiftpeft_dnnl_md dst, const_dnnl_primitive_attr_t attr) {
    dnnl_matmul_desc_t op;
    dnnl_status_t s = dnnl_matmul_desc_init(&op, SWIFTPEFT_DNNL_MD(src), SWIFTPEFT_DNNL_MD(weights), NULL,
                                            SWIFTPEFT_DNNL_MD(dst));
    return s != dnnl_success ? s : dnnl_primitive_desc_create(pd, &op, attr, engine, NULL);
}
static inline dnnl_status_t swiftpeft_dnnl_post_ops_append_sum(dnnl_post_ops_t ops, float scale) {
    return dnnl_post_ops_append_sum(ops, scale);
}
#endif

static inline size_t swiftpeft_dnnl_md_get_size(swiftpeft_dnnl_md md) {
    return dnnl_memory_desc_get_size(SWIFTPEFT_DNNL_MD(md));
}
static inline dnnl_status_t swiftpeft_dnnl_memory_create(dnnl_memory_t *memory, swiftpeft_dnnl_md md,
                                                         dnnl_engine_t engine, void *handle) {
    return dnnl_memory_create(memory, SWIFTPEFT_DNNL_MD(md), engine, handle);
}
static inline dnnl_status_t swiftpeft_dnnl_reorder_pd_create(dnnl_primitive_desc_t *pd, swiftpeft_dnnl_md src,
        dnnl_engine_t src_engine, swiftpeft_dnnl_md dst, dnnl_engine_t dst_engine, const_dnnl_primitive_attr_t attr) {
    return dnnl_reorder_primitive_desc_create(pd, SWIFTPEFT_DNNL_MD(src), src_engine, SWIFTPEFT_DNNL_MD(dst),
                                              dst_engine, attr);
}
/// Whether an ISA has AVX512-BF16 (dnnl_cpu_isa_t values are bit sets, each holding the ISAs below it):
/// oneDNN 3 reports avx10_1_512 (avx512_core_fp16) and avx512_core_amx_fp16 too, which contain it.
static inline int swiftpeft_dnnl_isa_has_avx512_bf16(dnnl_cpu_isa_t isa) {
    return ((unsigned)isa & (unsigned)dnnl_cpu_isa_avx512_core_bf16) == (unsigned)dnnl_cpu_isa_avx512_core_bf16;
}
