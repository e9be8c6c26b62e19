// The emulation build of csrc/cuda/decode_head.cu: the same source, compiled by the host
// C++ compiler against the SIMT emulator (ELF_FAST_SIMT_EMU is set for this module).
#include "../cuda/decode_head.cu"
