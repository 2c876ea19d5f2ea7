// zlib (gzip), Zstandard and LZ4: the codecs of Parquet pages besides Snappy (which Containers decodes
// itself) and of Arrow IPC bodies, and of data files compressed whole.
#include <zlib.h>
#include <zstd.h>
#include <lz4.h>
#include <lz4frame.h>
