// The large-block cache (see block_cache.h).
#include "autograd/block_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "autograd/check.h"

namespace loom {
namespace {

struct Cache {
  std::mutex mutex;
  std::multimap<size_t, void*> free_blocks;  // capacity -> mapping
  size_t bytes = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may be freed during exit
  return *c;
}

size_t page_rounded(size_t n) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

void* map_block(size_t capacity) {
  void* p = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

}  // namespace

BufferBlock acquire_block(size_t nbytes) {
  const size_t capacity = page_rounded(nbytes);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.free_blocks.find(capacity);
    if (it != c.free_blocks.end()) {
      BufferBlock b{it->second, capacity, false};
      c.bytes -= capacity;
      c.free_blocks.erase(it);
      return b;
    }
  }
  void* p = map_block(capacity);
  if (p == nullptr) {
    trim_block_cache();
    p = map_block(capacity);
  }
  LOOM_CHECK(p != nullptr, "out of memory allocating a {:.1f} MB tensor buffer: {}",
             static_cast<double>(nbytes) / 1048576.0, std::strerror(errno));
  return BufferBlock{p, capacity, true};
}

void release_block(const BufferBlock& block) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.bytes + block.capacity <= kBlockCacheBytes) {
      c.free_blocks.emplace(block.capacity, block.data);
      c.bytes += block.capacity;
      return;
    }
  }
  munmap(block.data, block.capacity);
}

void trim_block_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (const auto& [capacity, p] : c.free_blocks) munmap(p, capacity);
  c.free_blocks.clear();
  c.bytes = 0;
}

size_t block_cache_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.bytes;
}

}  // namespace loom
