// The scheduler behind cuda_emulation.h: blocks run one after another; the threads of a block
// are fibers (ucontext) that run until they reach a rendezvous (__syncthreads, a warp
// collective) or exit, then hand over to the next runnable one. A rendezvous completes when
// every thread it waits for has arrived or (where the hardware allows it) exited; a breach of
// the rules listed in the header stops the launch with an error.
#include "testing/cuda_emulation.h"

#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_EMU_ASAN 1
#endif
#endif
#ifdef CUDA_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace cuda_emu {
namespace {

// Per fiber: the deepest kernel here keeps a 4.3 KB local array (the fp64 scan backward);
// sanitizers need several times the frame sizes. A guard page below catches an overflow.
constexpr size_t kStackBytes = size_t(256) << 10;

enum class State { Ready, AtBarrier, AtCollective, Done };

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  uint3 idx;
  int lane = 0, warp = 0;
  State state = State::Ready;
  const char* file = "";
  int line = 0;
  // The collective it waits at, and its result once the collective completes.
  Collective kind = Collective::Shfl;
  unsigned mask = 0;
  int width = 32, arg = 0;
  uint64_t value = 0, result = 0;
};

struct Grid {
  const char* name;
  dim3 grid, block;
  uint3 block_idx;
  KernelBody body;
  const void* closure;
  std::vector<Fiber> fibers;
  int threads = 0, live = 0, at_barrier = 0;
  Fiber* current = nullptr;
  ucontext_t scheduler;
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
  std::string error;
};

thread_local Grid* g_grid = nullptr;
// Record-only mode (the launch plan, python -m scangraph.bench --plan): launches are checked and
// listed, not run.
bool g_record = false;
std::string g_recorded;
std::mutex g_launch_mutex;  // __shared__ is static storage: one launch at a time
std::vector<char*> g_stacks;  // reused between launches (under g_launch_mutex)
const size_t g_page = size_t(sysconf(_SC_PAGESIZE));

char* take_stack(size_t i) {
  while (g_stacks.size() <= i) {
    void* p = mmap(nullptr, kStackBytes + g_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cuda emulation: cannot map a fiber stack");
    mprotect(p, g_page, PROT_NONE);  // the stack grows down into this page
    g_stacks.push_back(static_cast<char*>(p) + g_page);
  }
  return g_stacks[i];
}

// After a failed launch the abandoned fibers' frames may leave sanitizer poison on the stacks.
void drop_stacks() {
  for (char* s : g_stacks) munmap(s - g_page, kStackBytes + g_page);
  g_stacks.clear();
}

const char* kind_name(Collective k) {
  switch (k) {
    case Collective::Shfl: return "__shfl_sync";
    case Collective::ShflXor: return "__shfl_xor_sync";
    case Collective::ShflUp: return "__shfl_up_sync";
    case Collective::ShflDown: return "__shfl_down_sync";
    case Collective::SyncWarp: return "__syncwarp";
    case Collective::Ballot: return "__ballot_sync";
    case Collective::Any: return "__any_sync";
    case Collective::All: return "__all_sync";
    case Collective::Wmma: return "a WMMA operation";
  }
  return "?";
}

std::string where(const Grid& g, const Fiber& f) {
  std::ostringstream s;
  s << "kernel " << g.name << ", block (" << g.block_idx.x << ", " << g.block_idx.y << ", " << g.block_idx.z
    << "), thread (" << f.idx.x << ", " << f.idx.y << ", " << f.idx.z << ") [warp " << f.warp << " lane " << f.lane
    << "]";
  return s.str();
}

std::string hex(unsigned v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

// ---- context switches (with AddressSanitizer's fiber annotations where it is on) ----------
void switch_to_fiber(Grid& g, Fiber& f) {
  g.current = &f;
#ifdef CUDA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
  swapcontext(&g.scheduler, &f.context);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&g.scheduler, &f.context);
#endif
}

// From the running fiber to the scheduler; returns when the scheduler resumes it (never, when
// `dies`).
void switch_to_scheduler(Grid& g, bool dies) {
  Fiber& f = *g.current;
#ifdef CUDA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(dies ? nullptr : &fake, g.scheduler_stack, g.scheduler_stack_size);
  swapcontext(&f.context, &g.scheduler);
  __sanitizer_finish_switch_fiber(fake, &g.scheduler_stack, &g.scheduler_stack_size);
#else
  (void)dies;
  swapcontext(&f.context, &g.scheduler);
#endif
}

[[noreturn]] void fail(Grid& g, const std::string& message) {
  if (g.error.empty()) g.error = message;
  g.current->state = State::Done;
  switch_to_scheduler(g, /*dies=*/true);
  __builtin_unreachable();
}

void fiber_main() {
  Grid& g = *g_grid;
#ifdef CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g.scheduler_stack, &g.scheduler_stack_size);
#endif
  g.body(g.closure);
  Fiber& f = *g.current;
  f.state = State::Done;
  --g.live;
  extern void on_exit(Grid & g, Fiber & f);
  on_exit(g, f);
  switch_to_scheduler(g, /*dies=*/true);
}

// ---- rendezvous ----------------------------------------------------------------------------
Fiber* lane_fiber(Grid& g, int warp, int lane) {
  const int t = warp * 32 + lane;
  return t < g.threads ? &g.fibers[size_t(t)] : nullptr;
}

void release_barrier(Grid& g) {
  const Fiber* first = nullptr;
  for (Fiber& f : g.fibers) {
    if (f.state != State::AtBarrier) continue;
    if (first == nullptr) {
      first = &f;
    } else if (f.line != first->line || std::strcmp(f.file, first->file) != 0) {
      g.current = &f;
      fail(g, "__syncthreads: the threads of a block reached different barriers: " + where(g, *first) + " at " +
                  first->file + ":" + std::to_string(first->line) + ", " + where(g, f) + " at " + f.file + ":" +
                  std::to_string(f.line));
    }
  }
  for (Fiber& f : g.fibers)
    if (f.state == State::AtBarrier) f.state = State::Ready;
  g.at_barrier = 0;
}

// Completes the collective that `f` waits at when every live lane of its mask has arrived;
// returns whether it did. The arrived lanes get their results and become runnable.
bool try_complete(Grid& g, Fiber& f) {
  Fiber* lanes[32] = {};
  for (int l = 0; l < 32; ++l) {
    if (!(f.mask >> l & 1u)) continue;
    Fiber* o = lane_fiber(g, f.warp, l);
    if (o == nullptr || o->state == State::Done) continue;  // exited (or beyond the block)
    if (o->state != State::AtCollective || o->mask != f.mask || o->kind != f.kind || o->width != f.width)
      return false;  // not there yet (mismatches are caught on arrival)
    lanes[l] = o;
  }
  if (f.kind == Collective::Wmma) {
    for (int l = 0; l < 32; ++l) {
      if (lanes[l] == nullptr) {
        g.current = &f;
        fail(g, std::string("WMMA needs all 32 lanes of the warp; lane ") + std::to_string(l) +
                    " has exited or is beyond the block: " + where(g, f) + " at " + f.file + ":" +
                    std::to_string(f.line));
      }
      if (lanes[l]->value != f.value || lanes[l]->arg != f.arg) {
        g.current = &f;
        fail(g, std::string("WMMA: the lanes of a warp passed different pointers or ldm: ") + where(g, f) +
                    " and lane " + std::to_string(l) + " at " + f.file + ":" + std::to_string(f.line));
      }
    }
  }
  unsigned votes = 0;
  int ayes = 0, voters = 0;
  for (int l = 0; l < 32; ++l) {
    if (lanes[l] == nullptr) continue;
    ++voters;
    if (lanes[l]->value) {
      votes |= 1u << l;
      ++ayes;
    }
  }
  for (int l = 0; l < 32; ++l) {
    Fiber* o = lanes[l];
    if (o == nullptr) continue;
    const int w = o->width, base = l & ~(w - 1);
    int src = l;
    switch (o->kind) {
      case Collective::Shfl: src = base + (o->arg & (w - 1)); break;
      case Collective::ShflXor: src = l ^ o->arg; src = src >= base + w ? l : src; break;
      case Collective::ShflUp: src = l - o->arg >= base ? l - o->arg : l; break;
      case Collective::ShflDown: src = l + o->arg < base + w ? l + o->arg : l; break;
      case Collective::Ballot: o->result = votes; break;
      case Collective::Any: o->result = ayes > 0; break;
      case Collective::All: o->result = ayes == voters; break;
      default: o->result = 0; break;
    }
    const bool shuffle = o->kind == Collective::Shfl || o->kind == Collective::ShflXor ||
                         o->kind == Collective::ShflUp || o->kind == Collective::ShflDown;
    if (shuffle) {
      if (src < 0 || src >= 32 || lanes[src] == nullptr) {
        g.current = o;
        fail(g, std::string(kind_name(o->kind)) + " reads lane " + std::to_string(src) +
                    ", which did not take part (not in the mask " + hex(o->mask) + ", exited, or beyond the block): " +
                    where(g, *o) + " at " + o->file + ":" + std::to_string(o->line));
      }
      o->result = lanes[src]->value;
    }
  }
  for (Fiber* o : lanes)
    if (o != nullptr) o->state = State::Ready;
  return true;
}

void on_exit(Grid& g, Fiber& f) {
  // A lane that exits no longer holds up its warp's collectives, nor the block's barrier.
  for (int l = 0; l < 32; ++l) {
    Fiber* o = lane_fiber(g, f.warp, l);
    if (o != nullptr && o->state == State::AtCollective && (o->mask >> f.lane & 1u)) try_complete(g, *o);
  }
  if (g.at_barrier > 0 && g.at_barrier == g.live) release_barrier(g);
}

Grid& running(const char* what) {
  if (g_grid == nullptr || g_grid->current == nullptr)
    throw std::runtime_error(std::string("cuda emulation: ") + what + " called outside a kernel");
  return *g_grid;
}

void wait_until_released(Grid& g, Fiber& f) {
  while (f.state != State::Ready) switch_to_scheduler(g, /*dies=*/false);
}

std::string describe_waits(const Grid& g) {
  std::ostringstream s;
  int shown = 0;
  for (const Fiber& f : g.fibers) {
    if (f.state == State::Done || f.state == State::Ready) continue;
    if (shown++ == 8) {
      s << "; ...";
      break;
    }
    s << "; " << where(g, f) << " waits at "
      << (f.state == State::AtBarrier ? std::string("__syncthreads") : std::string(kind_name(f.kind)) + " mask " + hex(f.mask))
      << " (" << f.file << ":" << f.line << ")";
  }
  return s.str();
}

void run_block(Grid& g) {
  const int n = g.threads;
  for (int t = 0; t < n; ++t) {
    Fiber& f = g.fibers[size_t(t)];
    f.idx = uint3{unsigned(t % g.block.x), unsigned(t / g.block.x % g.block.y), unsigned(t / (g.block.x * g.block.y))};
    f.warp = t / 32;
    f.lane = t % 32;
    f.state = State::Ready;
    f.file = "";
    f.line = 0;
    f.stack = take_stack(size_t(t));
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
  }
  g.live = n;
  g.at_barrier = 0;
  while (g.live > 0) {
    bool ran = false;
    for (int t = 0; t < n; ++t) {
      Fiber& f = g.fibers[size_t(t)];
      if (f.state != State::Ready) continue;
      switch_to_fiber(g, f);
      ran = true;
      if (!g.error.empty()) return;
    }
    if (!ran) {
      g.error = std::string("deadlock: no thread can run") + describe_waits(g);
      return;
    }
  }
}

void check_launch(const char* name, dim3 grid, dim3 block, size_t dynamic_shared) {
  std::ostringstream why;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    why << "an empty grid or block (the hardware rejects the launch)";
  else if (threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    why << "a block of " << block.x << " x " << block.y << " x " << block.z << " threads (limit 1024, z <= 64)";
  else if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    why << "a grid of " << grid.x << " x " << grid.y << " x " << grid.z << " blocks (y, z <= 65535)";
  else if (dynamic_shared != 0)
    why << "dynamic shared memory, which the emulation does not provide";
  if (why.tellp() > 0)
    throw std::runtime_error(std::string("cuda emulation: launch of ") + name + " with " + why.str());
}

}  // namespace

const uint3& thread_idx() { return running("threadIdx").current->idx; }
const uint3& block_idx() { return running("blockIdx").block_idx; }
const dim3& block_dim() { return running("blockDim").block; }
const dim3& grid_dim() { return running("gridDim").grid; }

[[noreturn]] void fail_in_kernel(const char* file, int line, const char* what) {
  Grid& g = running(what);
  fail(g, std::string(what) + ": " + where(g, *g.current) + " at " + file + ":" + std::to_string(line));
}

void syncthreads(const char* file, int line) {
  Grid& g = running("__syncthreads");
  Fiber& f = *g.current;
  f.state = State::AtBarrier;
  f.file = file;
  f.line = line;
  if (++g.at_barrier == g.live) release_barrier(g);
  wait_until_released(g, f);
}

uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg, int width, const char* file,
                         int line) {
  Grid& g = running(kind_name(kind));
  Fiber& f = *g.current;
  f.file = file;
  f.line = line;
  const std::string at = std::string(kind_name(kind)) + " at " + file + ":" + std::to_string(line) + ", " + where(g, f);
  if (!(mask >> f.lane & 1u)) fail(g, at + ": the mask " + hex(mask) + " does not name the calling lane");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail(g, at + ": width " + std::to_string(width) + " is not a power of two in [1, 32]");
  // Two lanes that each wait for the other in different collectives (or with different masks)
  // would wait forever. (A lane waiting for this one in a later collective is fine: this one
  // gets there once its current collective completes without it.)
  for (int l = 0; l < 32; ++l) {
    Fiber* o = lane_fiber(g, f.warp, l);
    if (o == nullptr || o == &f || o->state != State::AtCollective) continue;
    if (!(o->mask >> f.lane & 1u) || !(mask >> l & 1u)) continue;
    if (o->mask != mask || o->kind != kind || o->width != width)
      fail(g, at + " with mask " + hex(mask) + ", while lane " + std::to_string(l) + " waits for it at " +
                  kind_name(o->kind) + " with mask " + hex(o->mask) + " (" + o->file + ":" + std::to_string(o->line) +
                  ")");
  }
  f.kind = kind;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.state = State::AtCollective;
  try_complete(g, f);
  wait_until_released(g, f);
  return f.result;
}

bool recording() { return g_record; }

void run_grid(const char* kernel_name, dim3 grid, dim3 block, size_t dynamic_shared, KernelBody body,
              const void* closure) {
  check_launch(kernel_name, grid, block, dynamic_shared);
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  if (g_record) {
    std::ostringstream line;
    line << kernel_name << '\t' << grid.x << ' ' << grid.y << ' ' << grid.z << '\t' << block.x << ' ' << block.y
         << ' ' << block.z << '\n';
    g_recorded += line.str();
    return;
  }
  if (g_grid != nullptr) throw std::runtime_error("cuda emulation: a kernel launched another kernel");
  Grid g;
  g.name = kernel_name;
  g.grid = grid;
  g.block = block;
  g.body = body;
  g.closure = closure;
  g.threads = int(block.x * block.y * block.z);
  g.fibers.resize(size_t(g.threads));
  g_grid = &g;
  for (unsigned z = 0; z < grid.z && g.error.empty(); ++z)
    for (unsigned y = 0; y < grid.y && g.error.empty(); ++y)
      for (unsigned x = 0; x < grid.x && g.error.empty(); ++x) {
        g.block_idx = uint3{x, y, z};
        run_block(g);
      }
  g_grid = nullptr;
  if (!g.error.empty()) {
    drop_stacks();
    throw std::runtime_error("cuda emulation: " + g.error);
  }
}

}  // namespace cuda_emu

// For Python (ctypes): switch record-only mode, and take the recorded launches, one per line:
// "<kernel>\t<grid x y z>\t<block x y z>". Returns the bytes needed; copies when they fit.
extern "C" void scangraph_emulation_record(int on) {
  std::lock_guard<std::mutex> lock(cuda_emu::g_launch_mutex);
  cuda_emu::g_record = on != 0;
  cuda_emu::g_recorded.clear();
}

extern "C" long long scangraph_emulation_recorded(char* buffer, long long size) {
  std::lock_guard<std::mutex> lock(cuda_emu::g_launch_mutex);
  const long long needed = (long long)cuda_emu::g_recorded.size() + 1;
  if (buffer != nullptr && size >= needed) std::memcpy(buffer, cuda_emu::g_recorded.c_str(), size_t(needed));
  return needed;
}
