// The SIMT emulator's runtime: fibers for a block's threads, the scheduler with
// its barrier and warp-collective rendezvous, deadlock reports, the shared-memory
// race shadow, and launch-time fault handling. Interface: csrc/cuda/simt_emu.h.
#include <c10/util/Exception.h>
#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <map>
#include <algorithm>
#include <cmath>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include "../cuda/simt_emu.h"
#include "emu_internal.h"

namespace simt {

thread_local Coords tl_coords;

namespace {

// ---------------------------------------------------------------- context switch
#if defined(__x86_64__)
extern "C" void simt_switch_stack(void** save_sp, void* new_sp);
// Saves the callee-saved registers, MXCSR and the x87 control word on the current
// stack, stores the stack pointer in *save_sp, loads new_sp and restores the same.
asm(R"(
  .text
  .globl simt_switch_stack
  .hidden simt_switch_stack
  .type simt_switch_stack,@function
simt_switch_stack:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size simt_switch_stack, .-simt_switch_stack
)");
#endif

constexpr size_t kStackBytes = 256 * 1024;  // per fiber, with a guard page below
constexpr int kMaxThreads = 1024;

struct Pending {  // one warp collective waiting for its lanes
  Collective kind;
  unsigned mask = 0, arrived = 0;
  uint64_t vals[32];
  std::source_location where;
};

struct Warp {
  unsigned exists = 0, exited = 0;
  uint32_t sync_count = 0;  // completed collectives: orders shared-memory accesses within the warp
  std::vector<Pending> pending;
};

enum class State { Ready, Blocked, Done };

struct Fiber {
  void* sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
  unsigned char* stack = nullptr;  // lowest address (guard page), kStackBytes in all
  uint32_t tid = 0;
  uint3 idx{0, 0, 0};
  State state = State::Ready;
  const char* wait = nullptr;  // "barrier" or a collective name, for reports
  std::source_location wait_where;
  unsigned wait_mask = 0;
  uint64_t xchg[32];
  int bar_result = 0;
};

struct BlockRun {
  const LaunchSite* site = nullptr;
  dim3 grid{1, 1, 1}, block{1, 1, 1};
  uint3 block_idx{0, 0, 0};
  int nthreads = 0, alive = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int bar_waiting = 0, bar_pred = 0;
  std::source_location bar_where;
  uint32_t bar_count = 0;  // completed barriers
  Fiber* current = nullptr;
  void* sched_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t sched_uc;
#endif
  BlockBody body = nullptr;
  void* closure = nullptr;
  std::exception_ptr error;
  uint32_t serial = 0;  // increases with every block run: shared-memory shadow validity
  SharedRegion* dyn = nullptr;
  uint32_t launch = 0;      // increases with every launch
  size_t static_smem = 0;   // bytes of the static shared regions this launch touched
};

thread_local BlockRun* tl_run = nullptr;
const char kBarrier[] = "__syncthreads";  // Fiber::wait of threads at a barrier
std::mutex g_launch_mutex;  // one emulated launch at a time (signal handling is process-wide)
uint32_t g_serial = 0;

// The file name without its folders (no allocation: the fault handler uses it too).
const char* short_file(const char* f) {
  const char* slash = std::strrchr(f, '/');
  return slash ? slash + 1 : f;
}

std::string where_str(const std::source_location& w) {
  return std::string(short_file(w.file_name())) + ":" + std::to_string(w.line());
}

std::string idx_str(const uint3& v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

std::string mask_str(unsigned m) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", m);
  return buf;
}

std::string lanes_str(unsigned m) {
  std::string out;
  for (int l = 0; l < 32; ++l) {
    if (!((m >> l) & 1u)) continue;
    int e = l;
    while (e + 1 < 32 && ((m >> (e + 1)) & 1u)) ++e;
    if (!out.empty()) out += ",";
    out += e > l ? std::to_string(l) + "-" + std::to_string(e) : std::to_string(l);
    l = e;
  }
  return out;
}

std::string context_str() {
  const BlockRun* r = tl_run;
  if (!r) return "";
  std::string s = " [kernel " + std::string(r->site->kernel) + " launched at " + where_str(r->site->where) +
                  ", block " + idx_str(r->block_idx);
  if (r->current) s += ", thread " + idx_str(r->current->idx);
  return s + "]";
}

// ------------------------------------------------------------------- fibers
thread_local std::vector<unsigned char*> tl_stacks;  // reused across launches

unsigned char* stack_for(int tid) {
  while (static_cast<int>(tl_stacks.size()) <= tid) {
    void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "SIMT emulator: could not map a fiber stack");
    mprotect(p, static_cast<size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);  // overflow guard
    tl_stacks.push_back(static_cast<unsigned char*>(p));
  }
  return tl_stacks[static_cast<size_t>(tid)];
}

[[noreturn]] void fiber_main();

void switch_to_scheduler(Fiber& f) {
  BlockRun& r = *tl_run;
#if defined(__x86_64__)
  simt_switch_stack(&f.sp, r.sched_sp);
#else
  swapcontext(&f.uc, &r.sched_uc);
#endif
}

void resume(BlockRun& r, Fiber& f) {
  r.current = &f;
  tl_coords.thread = f.idx;
#if defined(__x86_64__)
  simt_switch_stack(&r.sched_sp, f.sp);
#else
  swapcontext(&r.sched_uc, &f.uc);
#endif
  r.current = nullptr;
}

#if !defined(__x86_64__)
void fiber_trampoline() { fiber_main(); }
#endif

void init_fiber(Fiber& f, int tid) {
  f.stack = stack_for(tid);
  f.state = State::Ready;
  f.wait = nullptr;
#if defined(__x86_64__)
  auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                          // fiber_main's return address: none
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);    // where simt_switch_stack's ret lands
  for (int i = 0; i < 6; ++i) *--sp = 0;              // rbp rbx r12 r13 r14 r15
  uint32_t csr[2] = {0, 0};
  asm volatile("stmxcsr %0" : "=m"(csr[0]));
  asm volatile("fnstcw %0" : "=m"(csr[1]));
  uint64_t packed;
  std::memcpy(&packed, csr, sizeof(packed));
  *--sp = packed;
  f.sp = sp;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack;
  f.uc.uc_stack.ss_size = kStackBytes;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, fiber_trampoline, 0);
#endif
}

[[noreturn]] void fiber_main() {
  BlockRun& r = *tl_run;
  Fiber& f = *r.current;
  try {
    r.body(r.closure);
  } catch (...) {
    if (!r.error) r.error = std::current_exception();
  }
  f.state = State::Done;
  r.alive -= 1;
  r.warps[f.tid / 32].exited |= 1u << (f.tid % 32);
  switch_to_scheduler(f);
  std::abort();  // a finished fiber is never resumed
}

Fiber& self() {
  BlockRun* r = tl_run;
  if (!r || !r->current) throw std::logic_error("SIMT emulator: device built-in called outside a kernel");
  return *r->current;
}

void block_until_released(Fiber& f, const char* what, const std::source_location& where, unsigned mask) {
  f.state = State::Blocked;
  f.wait = what;
  f.wait_where = where;
  f.wait_mask = mask;
  switch_to_scheduler(f);
  tl_coords.thread = f.idx;
}

const char* collective_name(Collective k) {
  switch (k) {
    case Collective::Shfl: return "__shfl*_sync";
    case Collective::Ballot: return "__ballot/__any/__all_sync";
    case Collective::Sync: return "__syncwarp";
    case Collective::Reduce: return "__reduce_*_sync";
    case Collective::Mma: return "mma.sync";
  }
  return "warp collective";
}

[[noreturn]] void deadlock(BlockRun& r) {
  std::ostringstream msg;
  msg << "SIMT emulator: block " << idx_str(r.block_idx) << " of kernel " << r.site->kernel << " (launched at "
      << where_str(r.site->where) << ") can make no progress: ";
  const int exited = r.nthreads - r.alive;
  if (r.bar_waiting > 0) {
    msg << "__syncthreads() at " << where_str(r.bar_where) << " was reached by " << r.bar_waiting << " of "
        << r.nthreads << " threads";
    if (exited > 0) {
      for (auto& f : r.fibers) {
        if (f.state == State::Done) {
          msg << "; " << exited << " had returned before it (e.g. thread " << idx_str(f.idx)
              << "): a barrier must be reached by every thread of the block";
          break;
        }
      }
    }
    msg << ". ";
  }
  for (size_t w = 0; w < r.warps.size(); ++w) {
    for (const auto& p : r.warps[w].pending) {
      const unsigned missing = p.mask & ~p.arrived;
      msg << collective_name(p.kind) << " with mask " << mask_str(p.mask) << " at " << where_str(p.where)
          << " in warp " << w << " waits for lanes " << lanes_str(missing);
      const unsigned gone = missing & r.warps[w].exited;
      if (gone) msg << " (lanes " << lanes_str(gone) << " have returned)";
      msg << ". ";
    }
  }
  // Threads blocked elsewhere (e.g. at a barrier while their warp-mates wait in a collective).
  for (auto& f : r.fibers) {
    if (f.state == State::Blocked && f.wait != kBarrier) {
      msg << "Thread " << idx_str(f.idx) << " waits in " << f.wait << " at " << where_str(f.wait_where) << ". ";
      break;
    }
  }
  throw std::runtime_error(msg.str());
}

void run_block(BlockRun& r) {
  r.serial = ++g_serial;
  r.alive = r.nthreads;
  r.bar_waiting = r.bar_pred = 0;
  r.bar_count = 0;
  const int nwarps = (r.nthreads + 31) / 32;
  r.warps.assign(static_cast<size_t>(nwarps), Warp{});
  for (int w = 0; w < nwarps; ++w) {
    const int lanes = std::min(32, r.nthreads - 32 * w);
    r.warps[static_cast<size_t>(w)].exists = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }
  for (int t = 0; t < r.nthreads; ++t) {
    Fiber& f = r.fibers[static_cast<size_t>(t)];
    f.tid = static_cast<uint32_t>(t);
    f.idx = uint3{static_cast<unsigned>(t) % r.block.x, (static_cast<unsigned>(t) / r.block.x) % r.block.y,
                  static_cast<unsigned>(t) / (r.block.x * r.block.y)};
    init_fiber(f, t);
  }
  while (r.alive > 0) {
    bool progressed = false;
    for (int t = 0; t < r.nthreads; ++t) {
      Fiber& f = r.fibers[static_cast<size_t>(t)];
      if (f.state != State::Ready) continue;
      progressed = true;
      resume(r, f);
      if (r.error) std::rethrow_exception(r.error);
    }
    if (!progressed) deadlock(r);
  }
}

// ------------------------------------------------------------ launch-time faults
thread_local sigjmp_buf tl_fault_jmp;
thread_local bool tl_in_launch = false;
thread_local char tl_fault_msg[768];
struct sigaction g_old_segv, g_old_bus;
std::vector<unsigned char> g_altstack(1 << 16);

void fault_handler(int sig, siginfo_t* info, void* uctx) {
  if (!tl_in_launch) {  // not ours: hand it to whoever was there before
    struct sigaction* old = sig == SIGSEGV ? &g_old_segv : &g_old_bus;
    if (old->sa_flags & SA_SIGINFO) {
      old->sa_sigaction(sig, info, uctx);
    } else if (old->sa_handler != SIG_IGN && old->sa_handler != SIG_DFL) {
      old->sa_handler(sig);
    } else {
      signal(sig, SIG_DFL);
      raise(sig);
    }
    return;
  }
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  char where[512];
  if (!describe_guarded_address(addr, where, sizeof(where)) &&
      !describe_fiber_stack_address(addr, where, sizeof(where))) {
    std::snprintf(where, sizeof(where), "invalid address %p%s", info->si_addr,
                  addr < 4096 ? " (a null pointer)" : "");
  }
  const BlockRun* r = tl_run;
  if (r && r->current) {
    const Fiber& f = *r->current;
    std::snprintf(tl_fault_msg, sizeof(tl_fault_msg),
                  "SIMT emulator: %s in kernel %s (launched at %s:%u), block (%u,%u,%u), thread (%u,%u,%u)", where,
                  r->site->kernel, short_file(r->site->where.file_name()), r->site->where.line(), r->block_idx.x,
                  r->block_idx.y, r->block_idx.z, f.idx.x, f.idx.y, f.idx.z);
  } else {
    std::snprintf(tl_fault_msg, sizeof(tl_fault_msg), "SIMT emulator: %s during a launch", where);
  }
  siglongjmp(tl_fault_jmp, 1);
}

struct FaultScope {
  stack_t old_stack{};
  FaultScope() {
    stack_t ss{};
    ss.ss_sp = g_altstack.data();
    ss.ss_size = g_altstack.size();
    sigaltstack(&ss, &old_stack);
    struct sigaction sa {};
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
    tl_in_launch = true;
  }
  ~FaultScope() {
    tl_in_launch = false;
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    sigaction(SIGBUS, &g_old_bus, nullptr);
    sigaltstack(&old_stack, nullptr);
  }
};

std::mutex g_config_mutex;
TensorCoreNumerics g_numerics;
const DeviceProfile kProfiles[] = {
    // opt-in maximum of shared memory per block (CUDA programming guide, compute capabilities)
    {"sm_80", 8, 0, 163 * 1024},  // A100
    {"sm_86", 8, 6, 99 * 1024},   // GA10x
    {"sm_89", 8, 9, 99 * 1024},   // AD10x
    {"sm_90", 9, 0, 227 * 1024},  // H100 / H200
};
const DeviceProfile* g_profile = &kProfiles[3];
std::map<std::string, size_t> g_static_smem;
std::map<std::string, int64_t> g_launches;

void record_static_smem(const char* kernel, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_static_smem[kernel] = bytes;
}

// x truncated toward zero to a multiple of `quantum` (a power of two; exact in double).
double truncate_to(double x, double quantum) { return std::trunc(x / quantum) * quantum; }

// Double to float, toward zero.
float to_float_rz(double s) {
  float f = static_cast<float>(s);  // to nearest
  if (std::isfinite(f) && std::fabs(static_cast<double>(f)) > std::fabs(s)) f = std::nextafter(f, 0.0f);
  if (std::isinf(f) && std::isfinite(s)) f = std::copysign(std::numeric_limits<float>::max(), f);
  return f;
}

}  // namespace

TensorCoreNumerics tensor_core_numerics() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  return g_numerics;
}

void set_tensor_core_numerics(const TensorCoreNumerics& n) {
  TORCH_CHECK(n.block >= 0 && n.block <= 64, "SIMT emulator: tensor-core block size must be 0 (k order, "
              "round to nearest) or 1..64, got ", n.block);
  TORCH_CHECK(n.kept_bits >= 11 && n.kept_bits <= 40, "SIMT emulator: kept bits must be in 11..40, got ",
              n.kept_bits);
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_numerics = n;
}

float tc_accumulate(float acc, const float* prods, int n) {
  const TensorCoreNumerics cfg = g_numerics;  // set between launches only
  if (cfg.block == 0) {
    for (int k = 0; k < n; ++k) acc += prods[k];
    return acc;
  }
  for (int k0 = 0; k0 < n; k0 += cfg.block) {
    const int k1 = std::min(n, k0 + cfg.block);
    bool finite = std::isfinite(acc);
    double m = std::fabs(static_cast<double>(acc));
    for (int k = k0; k < k1; ++k) {
      finite = finite && std::isfinite(prods[k]);
      m = std::max(m, std::fabs(static_cast<double>(prods[k])));
    }
    if (!finite) {  // inf / NaN propagate as in any fp32 sum
      for (int k = k0; k < k1; ++k) acc += prods[k];
      continue;
    }
    if (m == 0.0) {  // all zeros: only the sign of the zero is left to decide
      for (int k = k0; k < k1; ++k) acc += prods[k];
      continue;
    }
    // the largest term's exponent e (2^e <= m < 2^(e+1)); terms kept to multiples of 2^(e - kept + 1)
    const double quantum = std::ldexp(1.0, std::ilogb(m) - cfg.kept_bits + 1);
    // the truncated terms are multiples of `quantum` below (block + 1) 2^(e+1): exact in double
    double s = truncate_to(static_cast<double>(acc), quantum);
    for (int k = k0; k < k1; ++k) s += truncate_to(static_cast<double>(prods[k]), quantum);
    acc = cfg.round_to_nearest ? static_cast<float>(s) : to_float_rz(s);
  }
  return acc;
}

const DeviceProfile& device_profile() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  return *g_profile;
}

bool set_device_profile(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  for (const auto& p : kProfiles) {
    if (name == p.name) {
      g_profile = &p;
      return true;
    }
  }
  return false;
}

std::map<std::string, int64_t> launch_counts(bool reset) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  auto out = g_launches;
  if (reset) g_launches.clear();
  return out;
}

size_t recorded_static_smem(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  const auto it = g_static_smem.find(name);
  return it == g_static_smem.end() ? 0 : it->second;
}

// --------------------------------------------------------------- public API
[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("SIMT emulator: " + what + context_str()); }

[[noreturn]] void device_assert_failed(const char* cond, const char* file, int line) {
  fail("device-side assertion `" + std::string(cond) + "` failed at " + short_file(file) + ":" +
       std::to_string(line));
}

int syncthreads(int predicate, const std::source_location& where) {
  Fiber& f = self();
  BlockRun& r = *tl_run;
  if (r.bar_waiting == 0) {
    r.bar_where = where;
  } else if (r.bar_where.line() != where.line() || std::string(r.bar_where.file_name()) != where.file_name()) {
    fail("divergent __syncthreads(): this thread is at " + where_str(where) + " while " +
         std::to_string(r.bar_waiting) + " thread(s) of the block wait at " + where_str(r.bar_where));
  }
  r.bar_pred += predicate;
  if (++r.bar_waiting == r.nthreads) {  // the last one releases the block
    const int count = r.bar_pred;
    for (auto& g : r.fibers) {
      if (g.state == State::Blocked && g.wait == kBarrier) {
        g.state = State::Ready;
        g.bar_result = count;
      }
    }
    r.bar_waiting = r.bar_pred = 0;
    r.bar_count += 1;
    return count;
  }
  block_until_released(f, kBarrier, where, 0);
  return f.bar_result;
}

void warp_collective(Collective kind, unsigned mask, uint64_t payload, uint64_t out[32],
                     const std::source_location& where) {
  Fiber& f = self();
  BlockRun& r = *tl_run;
  const unsigned lane = f.tid % 32;
  Warp& w = r.warps[f.tid / 32];
  if (!((mask >> lane) & 1u)) {
    fail(std::string(collective_name(kind)) + " at " + where_str(where) + " with mask " + mask_str(mask) +
         " called by lane " + std::to_string(lane) + ", which its mask excludes");
  }
  if (mask & ~w.exists) {
    fail(std::string(collective_name(kind)) + " at " + where_str(where) + " with mask " + mask_str(mask) +
         " names lanes " + lanes_str(mask & ~w.exists) + " that this block does not have (blockDim " +
         idx_str(uint3{r.block.x, r.block.y, r.block.z}) + ")");
  }
  Pending* p = nullptr;
  for (auto& q : w.pending) {
    if (!(q.mask & mask)) continue;
    if (q.mask != mask || q.kind != kind) {
      fail(std::string(collective_name(kind)) + " at " + where_str(where) + " with mask " + mask_str(mask) +
           " meets " + collective_name(q.kind) + " at " + where_str(q.where) + " with mask " + mask_str(q.mask) +
           " in the same warp: lanes named in both must execute the same collective with the same mask");
    }
    p = &q;
    break;
  }
  if (!p) {
    w.pending.push_back(Pending{kind, mask, 0, {}, where});
    p = &w.pending.back();
  }
  p->vals[lane] = payload;
  p->arrived |= 1u << lane;
  if (p->arrived == mask) {
    const size_t base = (f.tid / 32) * 32;
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      Fiber& g = r.fibers[base + static_cast<size_t>(l)];
      std::memcpy(g.xchg, p->vals, sizeof(g.xchg));
      if (&g != &f) g.state = State::Ready;
    }
    w.pending.erase(w.pending.begin() + (p - w.pending.data()));
    w.sync_count += 1;
  } else {
    block_until_released(f, collective_name(kind), where, mask);
  }
  std::memcpy(out, f.xchg, sizeof(f.xchg));
}

unsigned active_mask() {
  Fiber& f = self();
  const Warp& w = tl_run->warps[f.tid / 32];
  return w.exists & ~w.exited;
}

// ------------------------------------------------------------ shared memory
struct SharedRegion::Entry {
  uint32_t serial;  // block run in which this byte was last touched (else: not written in this block)
  uint16_t w_tid, r_tid;
  uint32_t w_bar, w_sync, r_bar, r_sync;
  uint32_t a_bar;  // barrier count at the last atomic on this byte
  bool written, read, atomic;
};

SharedRegion::SharedRegion(const char* name, size_t bytes) : name_(name) { resize(bytes); }
SharedRegion::~SharedRegion() {
  std::free(data_);
  std::free(shadow_);
}

void SharedRegion::resize(size_t bytes) {
  if (bytes == bytes_ && (data_ || bytes == 0)) return;
  std::free(data_);
  std::free(shadow_);
  bytes_ = bytes;
  data_ = static_cast<unsigned char*>(std::calloc(bytes ? bytes : 1, 1));
  shadow_ = static_cast<Entry*>(std::calloc(bytes ? bytes : 1, sizeof(Entry)));
  TORCH_CHECK(data_ && shadow_, "SIMT emulator: out of memory for shared memory '", name_, "'");
}

void SharedRegion::check_bounds(int64_t byte, size_t n) const {
  if (byte >= 0 && static_cast<size_t>(byte) + n <= bytes_) return;
  const int64_t elem = n ? byte / static_cast<int64_t>(n) : byte;
  fail("shared-memory access out of bounds: " + std::string(name_) + "[" + std::to_string(elem) + "] (" +
       std::to_string(n) + "-byte elements at byte offset " + std::to_string(byte) + ") in a region of " +
       std::to_string(bytes_) + " bytes");
}

namespace {
// Whether an earlier access by thread `tid` (at barrier count `bar`, warp sync count `sync`)
// is ordered before the current thread's access.
bool ordered(const BlockRun& r, const Fiber& me, uint16_t tid, uint32_t bar, uint32_t sync) {
  if (tid == me.tid) return true;
  if (r.bar_count > bar) return true;
  return tid / 32 == me.tid / 32 && r.warps[me.tid / 32].sync_count > sync;
}
}  // namespace

void SharedRegion::on_access(size_t offset, size_t n, Access kind) {
  BlockRun* r = tl_run;
  if (!r || !r->current) return;
  if (launch_ != r->launch && this != r->dyn) {  // a static region's first access in this launch
    launch_ = r->launch;
    r->static_smem += bytes_;
  }
  const Fiber& me = *r->current;
  const char* what = kind == Access::Read ? "read" : kind == Access::Write ? "write" : "atomic";
  for (size_t i = offset; i < offset + n; ++i) {
    Entry& e = shadow_[i];
    const std::string at = std::string(name_) + " (byte " + std::to_string(i) + ")";
    if (e.serial != r->serial) {
      e = Entry{};
      e.serial = r->serial;
    }
    if (kind != Access::Write && !e.written) {
      fail(std::string(what) + " of shared memory " + at + " before any thread of this block has written it (never "
           "written, or a __syncthreads() missing between the write and this " + what + ")");
    }
    const std::string race = "shared-memory race on " + at + ": " + what;
    if (e.written && !ordered(*r, me, e.w_tid, e.w_bar, e.w_sync)) {
      fail(race + " of a value that thread " + std::to_string(e.w_tid) +
           " wrote, with no __syncthreads()/__syncwarp() in between");
    }
    if (kind != Access::Read && e.read && !ordered(*r, me, e.r_tid, e.r_bar, e.r_sync)) {
      fail(race + " while thread " + std::to_string(e.r_tid) +
           " may still read the value (no __syncthreads()/__syncwarp() since its read)");
    }
    // atomics do not race each other; plain accesses after them need a barrier
    if (kind != Access::Atomic && e.atomic && r->bar_count == e.a_bar) {
      fail(race + " of a value that atomics update, with no __syncthreads() after them");
    }
    const auto tid = static_cast<uint16_t>(me.tid);
    const uint32_t sync = r->warps[me.tid / 32].sync_count;
    if (kind == Access::Read) {
      e.read = true;
      e.r_tid = tid;
      e.r_bar = r->bar_count;
      e.r_sync = sync;
    } else if (kind == Access::Write) {
      e = Entry{r->serial, tid, 0, r->bar_count, sync, 0, 0, 0, true, false, false};
    } else {
      e.atomic = true;
      e.a_bar = r->bar_count;
    }
  }
}

SharedRegion* dynamic_shared_region() {
  BlockRun* r = tl_run;
  if (!r || !r->dyn) fail("dynamic shared memory used outside a kernel");
  return r->dyn;
}

bool describe_fiber_stack_address(uintptr_t addr, char* out, size_t out_size) {
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (unsigned char* s : tl_stacks) {
    const auto lo = reinterpret_cast<uintptr_t>(s);
    if (addr >= lo && addr < lo + page) {
      std::snprintf(out, out_size, "stack overflow of an emulated thread (%zu KiB per thread)", kStackBytes / 1024);
      return true;
    }
  }
  return false;
}

std::string kernel_name_from(const char* pretty) {
  std::string s(pretty);
  const auto k = s.find("K = ");
  if (k == std::string::npos) return s;
  size_t end = k + 4;
  int depth = 0;
  for (; end < s.size(); ++end) {
    const char c = s[end];
    if (c == '<' || c == '(') ++depth;
    if (c == '>' || c == ')') --depth;
    if (depth == 0 && (c == ';' || c == ']')) break;
  }
  return s.substr(k + 4, end - k - 4);
}

void run_grid(const LaunchSite& site, dim3 grid, dim3 block, size_t dynamic_smem, BlockBody body, void* closure) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const std::string at = " (kernel " + std::string(site.kernel) + " launched at " + where_str(site.where) + ")";
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreads && block.x <= 1024 && block.y <= 1024 && block.z <= 64,
              "SIMT emulator: invalid block size ", idx_str(uint3{block.x, block.y, block.z}),
              ": a block has 1 to 1024 threads (z <= 64)", at);
  TORCH_CHECK(grid.x >= 1 && grid.x <= 2147483647u && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 &&
                  grid.z <= 65535,
              "SIMT emulator: invalid grid ", idx_str(uint3{grid.x, grid.y, grid.z}),
              ": x in [1, 2^31 - 1], y and z in [1, 65535]", at);
  const DeviceProfile& prof = device_profile();
  TORCH_CHECK(dynamic_smem <= prof.smem_optin, "SIMT emulator: ", dynamic_smem,
              " bytes of dynamic shared memory exceed a block's ", prof.smem_optin, " on the emulated ", prof.name,
              " (its opt-in maximum per block)", at);

  std::lock_guard<std::mutex> lock(g_launch_mutex);
  {
    std::lock_guard<std::mutex> config_lock(g_config_mutex);
    g_launches[site.kernel] += 1;
  }
  thread_local BlockRun run;
  thread_local SharedRegion dyn("dynamic shared memory", 0);
  dyn.resize(dynamic_smem);
  run.site = &site;
  run.grid = grid;
  run.block = block;
  run.nthreads = static_cast<int>(threads);
  run.fibers.resize(threads);
  run.body = body;
  run.closure = closure;
  run.error = nullptr;
  run.current = nullptr;
  run.dyn = &dyn;
  static uint32_t launches = 0;
  run.launch = ++launches;
  run.static_smem = 0;
  tl_coords.block_dim = block;
  tl_coords.grid_dim = grid;

  std::string failure;
  {
    FaultScope faults;
    tl_run = &run;
    if (sigsetjmp(tl_fault_jmp, 1) != 0) {
      failure = tl_fault_msg;
    } else {
      try {
        for (unsigned z = 0; z < grid.z; ++z) {
          for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
              run.block_idx = uint3{x, y, z};
              tl_coords.block = run.block_idx;
              run_block(run);
            }
          }
        }
      } catch (const std::exception& e) {
        failure = e.what();
      }
    }
    tl_run = nullptr;
    run.current = nullptr;
  }
  TORCH_CHECK(failure.empty(), failure);
  record_static_smem(site.kernel, run.static_smem);
  TORCH_CHECK(run.static_smem + dynamic_smem <= prof.smem_optin, "SIMT emulator: kernel ", site.kernel,
              " (launched at ", where_str(site.where), ") uses ", run.static_smem, " bytes of static + ", dynamic_smem,
              " of dynamic shared memory per block, over the ", prof.smem_optin, " bytes an ", prof.name,
              " block may have: that launch fails on such a GPU");
  const std::string canary = check_canaries();
  TORCH_CHECK(canary.empty(), "SIMT emulator: after kernel ", site.kernel, " (launched at ", where_str(site.where),
              "): ", canary);
}

}  // namespace simt
