// Batched, class-aware hard NMS with 64-bit suppression bitmasks.
//
// Inputs are prepared on the GPU by engines/cuda_nms.py: per image, candidates are filtered by score,
// sorted by score descending (ties: lower original index first, a stable sort -- the same order as
// torchvision.ops.nms and pipeline/nms.py) and cut to top-k. Image b then holds counts[b] valid boxes at
// the front of its K slots.
//
// Pass 1 (nms_mask_kernel): grid (col_blocks, col_blocks, B), 64 threads. Block (cb, rb) of image b
// compares the 64 "row" boxes of tile rb with the 64 "column" boxes of tile cb and writes, per row box i,
// one 64-bit word whose bit j says "column box j has a higher index than i, the same class and
// IoU(i, j) > iou_threshold". Tiles below the diagonal are never read and are written as zero.
//
// Pass 2 (nms_reduce_kernel): one block per image. A serial scan over the sorted boxes, with the
// "removed" bitmask in shared memory: box i is kept if its bit is clear; keeping it ORs its mask row into
// "removed" (the words are split across the block's threads). The scan stops after max_output kept boxes.
// Row i only sets bits of boxes after i, so reading bit i never races with the OR of row i.
//
// IoU is computed with explicit round-to-nearest intrinsics (no fused multiply-add) so it gives the same
// float32 value as the CPU reference, and compared with the threshold in double like torchvision's CPU
// kernel does. IoU of two zero-area boxes is NaN, which never exceeds the threshold (no suppression).
//
// No headers are included so the file compiles unchanged with NVRTC and with nvcc.

#define NMS_TILE 64

// Dynamic shared memory declaration; engines/cuda/nms_host_harness.cpp (which runs these kernels on the CPU
// for tests) substitutes its own definition.
#ifndef NMS_DYNAMIC_SHARED
#define NMS_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

__device__ __forceinline__ bool nms_iou_above(float ax1, float ay1, float ax2, float ay2, float area_a,
                                              const float* b, double iou_threshold) {
  const float left = fmaxf(ax1, b[0]);
  const float top = fmaxf(ay1, b[1]);
  const float right = fminf(ax2, b[2]);
  const float bottom = fminf(ay2, b[3]);
  const float w = fmaxf(__fsub_rn(right, left), 0.0f);
  const float h = fmaxf(__fsub_rn(bottom, top), 0.0f);
  const float inter = __fmul_rn(w, h);
  const float area_b = __fmul_rn(__fsub_rn(b[2], b[0]), __fsub_rn(b[3], b[1]));
  const float iou = __fdiv_rn(inter, __fsub_rn(__fadd_rn(area_a, area_b), inter));
  return (double)iou > iou_threshold;
}

extern "C" __global__ void nms_mask_kernel(const float* __restrict__ boxes,   // (B, K, 4) sorted
                                           const int* __restrict__ classes,   // (B, K)
                                           const int* __restrict__ counts,    // (B,)
                                           int K, int col_blocks, double iou_threshold,
                                           unsigned long long* __restrict__ mask)  // (B, K, col_blocks)
{
  const int img = blockIdx.z;
  const int row_block = blockIdx.y;
  const int col_block = blockIdx.x;
  const int n = counts[img];
  const int row_start = row_block * NMS_TILE;
  if (row_start >= n) return;  // rows past the valid count are never read (uniform for the block)
  const int rows = min(n - row_start, NMS_TILE);
  const int row = row_start + (int)threadIdx.x;
  const size_t img_off = (size_t)img * (size_t)K;
  unsigned long long* out = mask + (img_off + (size_t)row) * (size_t)col_blocks + col_block;

  const int col_start = col_block * NMS_TILE;
  if (col_block < row_block || col_start >= n) {
    if ((int)threadIdx.x < rows) *out = 0ULL;
    return;
  }
  const int cols = min(n - col_start, NMS_TILE);

  __shared__ float col_boxes[NMS_TILE * 4];
  __shared__ int col_classes[NMS_TILE];
  if ((int)threadIdx.x < cols) {
    const size_t src = img_off + (size_t)(col_start + (int)threadIdx.x);
    col_boxes[threadIdx.x * 4 + 0] = boxes[src * 4 + 0];
    col_boxes[threadIdx.x * 4 + 1] = boxes[src * 4 + 1];
    col_boxes[threadIdx.x * 4 + 2] = boxes[src * 4 + 2];
    col_boxes[threadIdx.x * 4 + 3] = boxes[src * 4 + 3];
    col_classes[threadIdx.x] = classes[src];
  }
  __syncthreads();

  if ((int)threadIdx.x < rows) {
    const size_t r = img_off + (size_t)row;
    const float ax1 = boxes[r * 4 + 0];
    const float ay1 = boxes[r * 4 + 1];
    const float ax2 = boxes[r * 4 + 2];
    const float ay2 = boxes[r * 4 + 3];
    const float area_a = __fmul_rn(__fsub_rn(ax2, ax1), __fsub_rn(ay2, ay1));
    const int cls = classes[r];
    unsigned long long bits = 0ULL;
    const int start = (row_block == col_block) ? (int)threadIdx.x + 1 : 0;
    for (int j = start; j < cols; ++j) {
      if (col_classes[j] == cls &&
          nms_iou_above(ax1, ay1, ax2, ay2, area_a, col_boxes + j * 4, iou_threshold)) {
        bits |= 1ULL << j;
      }
    }
    *out = bits;
  }
}

extern "C" __global__ void nms_reduce_kernel(const unsigned long long* __restrict__ mask,  // (B, K, col_blocks)
                                             const int* __restrict__ counts,               // (B,)
                                             const long long* __restrict__ order,          // (B, K)
                                             int K, int col_blocks, int max_output,
                                             long long* __restrict__ keep_out,  // (B, max_output), -1 pad
                                             int* __restrict__ num_kept)        // (B,)
{
  NMS_DYNAMIC_SHARED(unsigned long long, removed);  // col_blocks words
  const int img = blockIdx.x;
  const int n = counts[img];
  const int n_words = (n + NMS_TILE - 1) / NMS_TILE;
  const size_t img_off = (size_t)img * (size_t)K;
  long long* out = keep_out + (size_t)img * (size_t)max_output;

  for (int w = threadIdx.x; w < n_words; w += blockDim.x) removed[w] = 0ULL;
  for (int k = threadIdx.x; k < max_output; k += blockDim.x) out[k] = -1LL;
  __syncthreads();

  int kept = 0;  // every thread keeps the same count: all branches below are uniform
  for (int i = 0; i < n && kept < max_output; ++i) {
    const int word = i / NMS_TILE;
    const int bit = i % NMS_TILE;
    if ((removed[word] >> bit) & 1ULL) continue;
    if (threadIdx.x == 0) out[kept] = order[img_off + (size_t)i];
    ++kept;
    const unsigned long long* row = mask + (img_off + (size_t)i) * (size_t)col_blocks;
    for (int w = word + (int)threadIdx.x; w < n_words; w += blockDim.x) removed[w] |= row[w];
    __syncthreads();
  }
  if (threadIdx.x == 0) num_kept[img] = kept;
}
