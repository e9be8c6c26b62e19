// Argument validation shared by every op (CPU and CUDA). Messages name the argument.
#include "elf_fast.h"

#include <sstream>

namespace elf_fast {

void check_float_tensor(const Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "elf_fast: argument '", name, "' is undefined");
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, "elf_fast: argument '", name,
              "' must be float32, bfloat16 or float16, got ", st);
  TORCH_CHECK(t.is_contiguous(), "elf_fast: argument '", name, "' must be contiguous (call .contiguous())");
}

void check_same_device(const Tensor& a, const char* name_a, const Tensor& b, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), "elf_fast: argument '", name_b, "' is on ", b.device(), " but '",
              name_a, "' is on ", a.device());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, "elf_fast: argument '", name, "' must have shape ", expected, ", got ",
              t.sizes());
}

}  // namespace elf_fast
