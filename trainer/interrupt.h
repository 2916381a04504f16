// Ctrl-C (SIGINT) and SIGTERM during a training run: the run stops at the next step boundary,
// saves a checkpoint and the adapter of that step, and says how to continue, instead of dying
// with up to checkpoint.every steps lost. A second signal ends the process at once (the
// default action), for when the step or the save itself is what the user wants to get out of.
//
// The handler only records the signal (an atomic int and one write(2) to stderr); the training
// loop reads it between steps. Only the training loop installs it (InterruptGuard), so Ctrl-C
// while a model loads or the first evaluation runs still ends the process at once: nothing has
// been trained yet.
#pragma once

namespace loom {

// Installs the handler for SIGINT and SIGTERM for its lifetime and restores the handlers that
// were there before; a signal that was ignored stays ignored. Guards do not nest (the second
// one's constructor throws).
class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  // The signal that asked the run to stop (SIGINT or SIGTERM), or 0 when none came.
  int signal() const;
};

// "SIGINT (Ctrl-C)", "SIGTERM" or "signal N".
const char* interrupt_signal_name(int signal);

}  // namespace loom
