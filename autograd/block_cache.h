// Large tensor buffers and the cache that recycles them.
//
// A training step allocates and frees the same activation sizes thousands of times (every
// layer, forward, recompute and backward). Served by malloc, large blocks are either fresh mmaps
// (each first touch page-faults a zeroed page in: ~10% of a step, measured) or pieces of the
// heap, which fragments until the process holds twice its live memory (1.5 GB resident for
// 0.56 GB live, measured on the NF4 training step). Here a block of kBlockCacheMinBytes or more
// is its own anonymous mapping, and a freed one is kept, up to kBlockCacheBytes in all, for the
// next request of the same page-rounded size. Smaller blocks go to malloc. The limit is above
// what a step frees and maps again: at 256 MB the SmolLM2 NF4 step (B = 4, T = 512) mapped ~65
// blocks of 4.5 MB afresh each step (~78k page faults; with the loss's 96 MB logits buffer
// cached too, ~440k), at 512 MB ~30 (~36k), at 768 MB or more none; peak RSS 863 -> 926 MB, the
// cache holding the backward's own sizes while the loss runs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace loom {

inline constexpr size_t kBlockCacheMinBytes = size_t{256} << 10;  // below: aligned_alloc
inline constexpr size_t kBlockCacheBytes = size_t{1024} << 20;    // most kept for reuse

struct BufferBlock {
  void* data = nullptr;
  size_t capacity = 0;  // bytes, page-rounded
  bool zeroed = false;  // a fresh mapping: the kernel hands out zero pages
};

// A block of at least nbytes (>= kBlockCacheMinBytes), page-aligned. Throws on failure, after
// releasing the cache and trying once more.
BufferBlock acquire_block(size_t nbytes);
// Gives a block from acquire_block back: kept for reuse, or unmapped when the cache is full.
void release_block(const BufferBlock& block);
// Unmaps every cached block (e.g. before a phase with a different working set).
void trim_block_cache();
// Bytes held in cached (free) blocks now.
size_t block_cache_bytes();

}  // namespace loom
