// The emulation build of csrc/cuda/block_ops.cu: the same source, compiled by the host
// C++ compiler against the SIMT emulator (ELF_FAST_SIMT_EMU is set for this module).
#include "../cuda/block_ops.cu"
