// One process-wide thread pool and a parallel-for with exception capture.
//
// The calling thread always takes part in its own loop, so a parallel_for never waits on a pool that is
// busy with other callers (concurrent searches from several Python threads) and nesting cannot
// deadlock. The first exception thrown by any task stops the hand-out of further tasks and is rethrown
// in the caller once every started task has returned.
#pragma once

#include <cstddef>
#include <functional>

namespace annforge::parallel {

// Threads a call with `num_threads` would use: 0 means every core; never more than the pool has + 1.
std::size_t resolve_threads(int num_threads);
// Number of hardware threads the pool was sized for.
std::size_t hardware_threads();

// Runs fn(task, worker) for task in [0, n_tasks). `worker` is in [0, resolve_threads(num_threads)) and
// unique among the threads running this call at the same time, so it can index per-thread scratch.
void parallel_for(std::size_t n_tasks, int num_threads,
                  const std::function<void(std::size_t task, std::size_t worker)>& fn);

}  // namespace annforge::parallel
