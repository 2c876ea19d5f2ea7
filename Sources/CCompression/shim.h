// zlib (gzip) and Zstandard: the codecs of Parquet pages besides Snappy (which Containers decodes itself).
#include <zlib.h>
#include <zstd.h>
