// Runs the kernels of nms_kernel.cu unchanged on the CPU, for tests on machines without a GPU.
//
// Every CUDA thread of a block is a std::thread; __syncthreads() is a std::barrier over the block; blocks run
// one after another, so __shared__ arrays can be plain statics. The CUDA float intrinsics map to the same
// IEEE round-to-nearest operations on the host (compile with -ffp-contract=off).
//
// Usage: nms_host_harness DIR
//   DIR/params.txt: "B K max_output iou_threshold"
//   DIR/boxes.f32 (B*K*4), classes.i32 (B*K), counts.i32 (B), order.i64 (B*K)   -- inputs, raw little-endian
//   DIR/mask.u64 (B*K*col_blocks), keep.i64 (B*max_output), num_kept.i32 (B)   -- outputs

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

struct HostDim3 {
  unsigned x = 1, y = 1, z = 1;
};
static HostDim3 blockIdx, blockDim, gridDim;
static thread_local HostDim3 threadIdx;
static std::barrier<>* g_barrier = nullptr;
static std::vector<unsigned long long> g_dynamic_shared;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() g_barrier->arrive_and_wait()
#define NMS_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(g_dynamic_shared.data())
using std::min;
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }

#include "nms_kernel.cu"

template <class Kernel>
static void launch(HostDim3 grid, HostDim3 block, size_t shared_bytes, Kernel kernel) {
  gridDim = grid;
  blockDim = block;
  g_dynamic_shared.assign(shared_bytes / 8 + 1, 0ULL);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        std::barrier<> bar(block.x);
        g_barrier = &bar;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block.x; ++t)
          threads.emplace_back([t, &kernel] {
            threadIdx = {t, 0, 0};
            kernel();
          });
        for (auto& th : threads) th.join();
      }
}

template <class T>
static std::vector<T> read_raw(const std::string& path, size_t count) {
  std::vector<T> v(count);
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(T)));
  if (!f) {
    std::fprintf(stderr, "cannot read %zu values from %s\n", count, path.c_str());
    std::exit(2);
  }
  return v;
}

template <class T>
static void write_raw(const std::string& path, const std::vector<T>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  int B = 0, K = 0, max_output = 0;
  double iou = 0.0;
  std::ifstream params(dir + "/params.txt");
  if (!(params >> B >> K >> max_output >> iou)) {
    std::fprintf(stderr, "bad %s/params.txt\n", dir.c_str());
    return 2;
  }
  const int col_blocks = (K + NMS_TILE - 1) / NMS_TILE;
  auto boxes = read_raw<float>(dir + "/boxes.f32", size_t(B) * K * 4);
  auto classes = read_raw<int>(dir + "/classes.i32", size_t(B) * K);
  auto counts = read_raw<int>(dir + "/counts.i32", size_t(B));
  auto order = read_raw<long long>(dir + "/order.i64", size_t(B) * K);
  std::vector<unsigned long long> mask(size_t(B) * K * col_blocks, 0xDEADBEEFDEADBEEFULL);
  std::vector<long long> keep(size_t(B) * max_output, 12345);
  std::vector<int> num_kept(size_t(B), -7);

  launch({unsigned(col_blocks), unsigned(col_blocks), unsigned(B)}, {NMS_TILE, 1, 1}, 0, [&] {
    nms_mask_kernel(boxes.data(), classes.data(), counts.data(), K, col_blocks, iou, mask.data());
  });
  launch({unsigned(B), 1, 1}, {256, 1, 1}, size_t(col_blocks) * 8, [&] {
    nms_reduce_kernel(mask.data(), counts.data(), order.data(), K, col_blocks, max_output, keep.data(),
                      num_kept.data());
  });
  write_raw(dir + "/mask.u64", mask);
  write_raw(dir + "/keep.i64", keep);
  write_raw(dir + "/num_kept.i32", num_kept);
  return 0;
}
