// Kernel instantiations for __half inputs (one file per dtype so that the build runs in parallel).
#include "selective_scan.cuh"

namespace segman_scan {
SEGMAN_SCAN_INSTANTIATE(__half, f16)
}  // namespace segman_scan
