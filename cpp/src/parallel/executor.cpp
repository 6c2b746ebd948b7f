#include "annforge/parallel/executor.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if !defined(_WIN32)
#include <unistd.h>
#endif

#include "annforge/common.h"

namespace annforge::parallel {
namespace {

struct Job {
  const std::function<void(std::size_t, std::size_t)>* fn = nullptr;
  std::size_t n_tasks = 0;
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> next_worker{1};  // worker 0 is the caller
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::condition_variable done;
  std::size_t active_helpers = 0;  // helpers inside run_tasks (guarded by mutex)
  bool closed = false;             // the caller no longer accepts helpers (guarded by mutex)
  std::exception_ptr error;        // first failure (guarded by mutex)

  void run_tasks(std::size_t worker) {
    while (!failed.load(std::memory_order_relaxed)) {
      const std::size_t task = next.fetch_add(1, std::memory_order_relaxed);
      if (task >= n_tasks) break;
      try {
        (*fn)(task, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
      }
    }
  }
};

class ThreadPool {
 public:
  explicit ThreadPool(std::size_t workers) {
    threads_.reserve(workers);
    for (std::size_t i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_loop(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  std::size_t workers() const { return threads_.size(); }

  void submit(const std::shared_ptr<Job>& job, std::size_t copies) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (std::size_t i = 0; i < copies; ++i) queue_.push_back(job);
    }
    if (copies == 1) wake_.notify_one(); else wake_.notify_all();
  }

 private:
  void worker_loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (stopping_ && queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      {
        std::lock_guard<std::mutex> lock(job->mutex);
        if (job->closed) continue;  // the caller finished the work alone
        ++job->active_helpers;
      }
      job->run_tasks(job->next_worker.fetch_add(1));
      {
        std::lock_guard<std::mutex> lock(job->mutex);
        --job->active_helpers;
      }
      job->done.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
};

std::size_t detect_hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : n;
}

// The pool is created on first use and recreated in a forked child (its threads do not survive fork).
// A pool inherited across fork is deliberately leaked: destroying it would join threads that do not exist.
ThreadPool& pool() {
  static std::mutex guard;
  static ThreadPool* current = nullptr;
#if !defined(_WIN32)
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(guard);
  if (current == nullptr || owner != getpid()) {
    current = new ThreadPool(detect_hardware_threads() - 1);  // NOLINT: process-lifetime singleton
    owner = getpid();
  }
#else
  std::lock_guard<std::mutex> lock(guard);
  if (current == nullptr) current = new ThreadPool(detect_hardware_threads() - 1);
#endif
  return *current;
}

}  // namespace

std::size_t hardware_threads() {
  static const std::size_t n = detect_hardware_threads();
  return n;
}

std::size_t resolve_threads(int num_threads) {
  ANNFORGE_CHECK(num_threads >= 0, ErrorKind::Value, "num_threads must be >= 0 (0 = all cores), got ",
                 num_threads);
  const std::size_t cap = hardware_threads();
  if (num_threads == 0) return cap;
  return std::min<std::size_t>(static_cast<std::size_t>(num_threads), cap);
}

void parallel_for(std::size_t n_tasks, int num_threads,
                  const std::function<void(std::size_t task, std::size_t worker)>& fn) {
  if (n_tasks == 0) return;
  const std::size_t threads = std::min(resolve_threads(num_threads), n_tasks);
  if (threads <= 1) {
    for (std::size_t i = 0; i < n_tasks; ++i) fn(i, 0);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n_tasks = n_tasks;
  pool().submit(job, threads - 1);
  job->run_tasks(0);
  std::unique_lock<std::mutex> lock(job->mutex);
  job->closed = true;
  job->done.wait(lock, [&] { return job->active_helpers == 0; });
  if (job->error) std::rethrow_exception(job->error);
}

}  // namespace annforge::parallel
