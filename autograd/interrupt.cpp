// SIGINT / SIGTERM during training and exports (autograd/interrupt.h).
#include "autograd/interrupt.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

#include "autograd/check.h"

namespace loom {

namespace {

std::atomic<int> g_signal{0};
std::atomic<bool> g_installed{false};
std::atomic<InterruptMode> g_mode{InterruptMode::FinishStep};
struct sigaction g_old_int, g_old_term;

void write_stderr(const char* text) {
  // write(2) is async-signal-safe; a short or failed write of a notice is not worth handling.
  const ssize_t n = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)n;
}

extern "C" void on_interrupt(int sig) {
  int expected = 0;
  if (g_signal.compare_exchange_strong(expected, sig)) {
    if (g_mode.load() == InterruptMode::Cancel)
      write_stderr(
          "\nloom: interrupted: stopping and removing what is half written (send it again to "
          "quit at once, leaving it)\n");
    else
      write_stderr(
          "\nloom: interrupted: finishing this step, then saving a checkpoint and the adapter "
          "(send it again to stop at once, losing the steps since the last checkpoint)\n");
    return;
  }
  // The second signal: the default action (end the process), as if no handler were there.
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

}  // namespace

InterruptGuard::InterruptGuard(InterruptMode mode) {
  LOOM_CHECK(!g_installed.exchange(true), "InterruptGuard: a guard is already installed");
  g_signal = 0;
  g_mode = mode;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a read or write the signal lands in goes on
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
  // A signal the process was started ignoring stays ignored (a shell starts background jobs
  // with SIGINT ignored, so that Ctrl-C at the terminal does not reach them; nohup likewise).
  if (g_old_int.sa_handler == SIG_IGN) sigaction(SIGINT, &g_old_int, nullptr);
  if (g_old_term.sa_handler == SIG_IGN) sigaction(SIGTERM, &g_old_term, nullptr);
}

InterruptGuard::~InterruptGuard() {
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
  g_installed = false;
}

int InterruptGuard::signal() const {
  return g_signal.load();
}

void throw_if_interrupted() {
  const int sig = g_signal.load(std::memory_order_relaxed);
  if (sig == 0 || !g_installed.load() || g_mode.load() != InterruptMode::Cancel) return;
  throw Interrupted(sig, std::string("interrupted by ") + interrupt_signal_name(sig));
}

const char* interrupt_signal_name(int signal) {
  switch (signal) {
    case SIGINT:
      return "SIGINT (Ctrl-C)";
    case SIGTERM:
      return "SIGTERM";
    default:
      return "a signal";
  }
}

}  // namespace loom
