// Open MPI's C interface. Its handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, …) are macros over
// the addresses of library globals, which Swift cannot import: the functions below return them.
#include <mpi.h>

static inline MPI_Comm swiftpeft_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype swiftpeft_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype swiftpeft_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Op swiftpeft_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Errhandler swiftpeft_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline void *swiftpeft_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline int swiftpeft_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
