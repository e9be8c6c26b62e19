// The emulation build of csrc/cuda/selfcond_proj.cu: the same source, compiled by the host
// C++ compiler against the SIMT emulator (ELF_FAST_SIMT_EMU is set for this module).
#include "../cuda/selfcond_proj.cu"
