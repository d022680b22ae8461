// Kernel instantiations for float inputs (one file per dtype so that the build runs in parallel).
#include "selective_scan.cuh"

namespace segman_scan {
SEGMAN_SCAN_INSTANTIATE(float, f32)
}  // namespace segman_scan
