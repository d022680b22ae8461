// Kernel instantiations for __nv_bfloat16 inputs (one file per dtype so that the build runs in parallel).
#include "selective_scan.cuh"

namespace segman_scan {
SEGMAN_SCAN_INSTANTIATE(__nv_bfloat16, bf16)
}  // namespace segman_scan
