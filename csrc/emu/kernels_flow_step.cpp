// The emulation build of csrc/cuda/flow_step.cu: the same source, compiled by the host
// C++ compiler against the SIMT emulator (ELF_FAST_SIMT_EMU is set for this module).
#include "../cuda/flow_step.cu"
