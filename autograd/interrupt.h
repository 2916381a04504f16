// Ctrl-C (SIGINT) and SIGTERM during long work that must not leave a mess behind.
//
// Two kinds of work install a guard:
//   - the training loop (InterruptMode::FinishStep): the run stops at the next step boundary,
//     saves a checkpoint and the adapter of that step, and says how to continue, instead of
//     dying with up to checkpoint.every steps lost. The loop polls signal() between steps.
//   - exports (InterruptMode::Cancel): the next throw_if_interrupted() -- every write of an
//     AtomicFileWriter, every batch of a perplexity evaluation -- throws Interrupted, so the
//     destructors remove the temporary files and staging folders on the way out and the
//     command exits 128 + signal. Without it the default action would kill the process with a
//     hundreds-of-MB "<file>.tmp" or ".<dir>.partial-<pid>" left next to the outputs.
// A second signal ends the process at once (the default action), for when the step or the
// clean-up itself is what the user wants to get out of.
//
// The handler only records the signal (an atomic int and one write(2) to stderr). Nothing is
// installed outside these guards, so Ctrl-C while a model loads, an evaluation or a generation
// runs ends the process at once: those write nothing.
#pragma once

#include <string>

#include "autograd/check.h"

namespace loom {

enum class InterruptMode {
  FinishStep,  // polled by the caller between units of work
  Cancel,      // throw_if_interrupted() throws Interrupted
};

// Installs the handler for SIGINT and SIGTERM for its lifetime and restores the handlers that
// were there before; a signal that was ignored stays ignored. Guards do not nest (the second
// one's constructor throws).
class InterruptGuard {
 public:
  explicit InterruptGuard(InterruptMode mode = InterruptMode::FinishStep);
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  // The signal that asked the work to stop (SIGINT or SIGTERM), or 0 when none came.
  int signal() const;
};

// What throw_if_interrupted() throws: the work was cancelled by `signal`; a command reports it
// and exits 128 + signal.
class Interrupted : public Error {
 public:
  Interrupted(int signal, const std::string& what) : Error(what), signal_(signal) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

// Throws Interrupted when a Cancel guard is installed and a signal has come; otherwise nothing
// (one atomic load: cheap enough for every write).
void throw_if_interrupted();

// "SIGINT (Ctrl-C)", "SIGTERM" or "a signal".
const char* interrupt_signal_name(int signal);

}  // namespace loom
