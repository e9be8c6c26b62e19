// Internals shared by the emulator's runtime files (csrc/emu/*.cpp); not for kernels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace simt {

// ---- guarded allocation (guarded_memory.cpp) ------------------------------------
void install_guarded_allocator();        // once, when elf_fast._C_emu loads
void set_guarded(bool on);               // new CPU tensors sit against guard pages
bool guarded();
int64_t guarded_live_count();
// Bytes written into the canary gap before any live guarded buffer: "" if none,
// else a description of the first corrupted buffer (and its canary is repaired).
std::string check_canaries();
// Describes `addr` if it lies in a guard page or canary gap of a guarded buffer.
bool describe_guarded_address(uintptr_t addr, char* out, size_t out_size);

// ---- fault handling during a launch (simt_emu.cpp) --------------------------------
bool describe_fiber_stack_address(uintptr_t addr, char* out, size_t out_size);

}  // namespace simt
