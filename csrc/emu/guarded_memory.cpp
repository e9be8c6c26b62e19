// Guarded allocation for the SIMT emulator: while it is on, every CPU tensor's
// bytes end exactly at a PROT_NONE page, so a kernel that reads or writes past the
// end of a buffer faults at once (the launch reports which buffer, by how many
// bytes, and the thread). The bytes between the preceding guard page and the
// buffer's start hold a canary, checked after every launch: writes before the start
// are reported too (reads there are not). The allocator delegates to torch's own
// while guarding is off.
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include <sys/mman.h>
#include <unistd.h>

#include "emu_internal.h"

namespace simt {
namespace {

constexpr unsigned char kCanary = 0xCB;

struct Block {
  uintptr_t map_base;  // first guard page
  size_t map_size;
  uintptr_t data;      // the buffer, ending at the last guard page
  size_t bytes;
  uintptr_t head;      // first byte after the first guard page (canary from here to data)
};

std::mutex g_mutex;
std::map<uintptr_t, Block> g_blocks;  // by data address
std::atomic<bool> g_on{false};
c10::Allocator* g_fallback = nullptr;

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

// Frees a pointer from this allocator: a guarded buffer, or one from torch's allocator.
void delete_any(void* ptr) {
  if (!ptr) return;
  Block b{};
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_blocks.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == g_blocks.end()) {
      g_fallback->raw_deleter()(ptr);  // allocated while guarding was off
      return;
    }
    b = it->second;
    g_blocks.erase(it);
  }
  munmap(reinterpret_cast<void*>(b.map_base), b.map_size);
}

struct GuardedAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (!g_on.load(std::memory_order_relaxed) || n == 0) {
      c10::DataPtr d = g_fallback->allocate(n);
      if (d.get() != d.get_context()) return d;
      // Re-wrap so that every pointer from this allocator has one deleter (raw_allocate
      // and raw_deallocate need that); delete_any tells the two kinds apart.
      void* p = d.release_context();
      return {p, p, &delete_any, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t page = page_size();
    const size_t pages = (n + page - 1) / page;
    const size_t map_size = (pages + 2) * page;
    void* m = mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(m != MAP_FAILED, "SIMT emulator: guarded allocation of ", n, " bytes failed");
    const auto base = reinterpret_cast<uintptr_t>(m);
    mprotect(m, page, PROT_NONE);
    mprotect(reinterpret_cast<void*>(base + (pages + 1) * page), page, PROT_NONE);
    // The buffer ends at the guard page; its alignment is then the largest power of two
    // dividing n (float32 data stays 4-byte aligned, int64 8-byte).
    Block b{base, map_size, base + (pages + 1) * page - n, n, base + page};
    std::memset(reinterpret_cast<void*>(b.head), kCanary, b.data - b.head);
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_blocks[b.data] = b;
    }
    void* p = reinterpret_cast<void*>(b.data);
    return {p, p, &delete_any, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &delete_any; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

}  // namespace

void install_guarded_allocator() {
  static GuardedAllocator alloc;
  static std::once_flag once;
  std::call_once(once, [] {
    g_fallback = c10::GetCPUAllocator();
    TORCH_CHECK(g_fallback->raw_deleter(), "SIMT emulator: torch's CPU allocator has no raw deleter");
    c10::SetCPUAllocator(&alloc, /*priority=*/100);
  });
}

void set_guarded(bool on) { g_on.store(on); }
bool guarded() { return g_on.load(); }

int64_t guarded_live_count() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<int64_t>(g_blocks.size());
}

std::string check_canaries() {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto& [data, b] : g_blocks) {
    const auto* p = reinterpret_cast<unsigned char*>(b.head);
    for (uintptr_t a = b.head; a < b.data; ++a, ++p) {
      if (*p == kCanary) continue;
      const size_t before = b.data - a;
      std::memset(reinterpret_cast<void*>(b.head), kCanary, b.data - b.head);  // report once
      return "out-of-bounds global write " + std::to_string(before) + " byte(s) before the start of a " +
             std::to_string(b.bytes) + "-byte buffer";
    }
  }
  return "";
}

bool describe_guarded_address(uintptr_t addr, char* out, size_t out_size) {
  // Called from the fault handler: try_lock, never block.
  std::unique_lock<std::mutex> lock(g_mutex, std::try_to_lock);
  if (!lock.owns_lock()) return false;
  const size_t page = page_size();
  for (auto& [data, b] : g_blocks) {
    const uintptr_t end = b.data + b.bytes;
    if (addr >= end && addr < end + page) {
      std::snprintf(out, out_size,
                    "out-of-bounds global access %zu byte(s) past the end of a %zu-byte buffer (address %p)",
                    static_cast<size_t>(addr - end), b.bytes, reinterpret_cast<void*>(addr));
      return true;
    }
    if (addr >= b.map_base && addr < b.head) {
      std::snprintf(out, out_size,
                    "out-of-bounds global access %zu byte(s) before the start of a %zu-byte buffer (address %p)",
                    static_cast<size_t>(b.data - addr), b.bytes, reinterpret_cast<void*>(addr));
      return true;
    }
  }
  return false;
}

}  // namespace simt
