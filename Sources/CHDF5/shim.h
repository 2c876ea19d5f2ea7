// HDF5 (serial) C API. Several HDF5 "constants" are macros that expand to H5open() calls or
// globals, which Swift cannot import; these inline functions return them.
#include <hdf5.h>

// Object info and object visits: HDF5 1.12 changed them (H5O_info2_t, with a token in place of
// the address), and from 1.12 on H5O_info_t and H5O_iterate_t are macros (H5O_info2_t and
// H5O_iterate2_t by default), which Swift cannot see, while H5Oget_info2 and H5Ovisit2 take the
// old H5O_info1_t. These names are the same with 1.10 (Debian 12) and 1.14 (Debian 13).
#if H5_VERSION_GE(1, 12, 0)
typedef H5O_info2_t chdf5_object_info;
typedef H5O_iterate2_t chdf5_object_iterate;
static inline herr_t chdf5_object_get_info(hid_t loc, chdf5_object_info *info, unsigned fields) {
    return H5Oget_info3(loc, info, fields);
}
static inline herr_t chdf5_object_visit(hid_t obj, H5_index_t index, H5_iter_order_t order,
                                        chdf5_object_iterate op, void *data, unsigned fields) {
    return H5Ovisit3(obj, index, order, op, data, fields);
}
#else
typedef H5O_info_t chdf5_object_info;
typedef H5O_iterate_t chdf5_object_iterate;
static inline herr_t chdf5_object_get_info(hid_t loc, chdf5_object_info *info, unsigned fields) {
    return H5Oget_info2(loc, info, fields);
}
static inline herr_t chdf5_object_visit(hid_t obj, H5_index_t index, H5_iter_order_t order,
                                        chdf5_object_iterate op, void *data, unsigned fields) {
    return H5Ovisit2(obj, index, order, op, data, fields);
}
#endif

static inline hid_t chdf5_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t chdf5_native_double(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t chdf5_native_int32(void) { return H5T_NATIVE_INT32; }
static inline hid_t chdf5_native_int64(void) { return H5T_NATIVE_INT64; }
static inline hid_t chdf5_native_uint8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t chdf5_c_s1(void) { return H5T_C_S1; }
static inline hid_t chdf5_p_default(void) { return H5P_DEFAULT; }
static inline hid_t chdf5_s_all(void) { return H5S_ALL; }
static inline hid_t chdf5_p_dataset_create(void) { return H5P_DATASET_CREATE; }
static inline unsigned chdf5_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline unsigned chdf5_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline unsigned chdf5_acc_rdwr(void) { return H5F_ACC_RDWR; }
static inline size_t chdf5_variable(void) { return H5T_VARIABLE; }
/// The memory type that reads a variable-length string (what h5py writes for a Python str) as a
/// `char *` that the library allocates (freed with H5free_memory), in the stored type's character
/// set (HDF5 does not convert between ASCII and UTF-8; h5py writes UTF-8).
static inline hid_t chdf5_vlen_string(hid_t stored) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t >= 0) { H5Tset_size(t, H5T_VARIABLE); H5Tset_cset(t, H5Tget_cset(stored)); }
    return t;
}
static inline H5T_class_t chdf5_class_float(void) { return H5T_FLOAT; }
static inline H5T_class_t chdf5_class_integer(void) { return H5T_INTEGER; }
static inline H5T_class_t chdf5_class_string(void) { return H5T_STRING; }
static inline hid_t chdf5_p_link_create(void) { return H5P_LINK_CREATE; }
static inline hid_t chdf5_p_file_create(void) { return H5P_FILE_CREATE; }
static inline hid_t chdf5_e_default(void) { return H5E_DEFAULT; }
/// File access list whose close also closes every object still open in the file, so a read that
/// failed half-way leaves nothing cached for the next open of the same path.
static inline hid_t chdf5_fapl_close_strong(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0) H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    return fapl;
}
