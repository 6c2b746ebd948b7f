// A reader/writer lock that lets a waiting writer in.
//
// std::shared_mutex on glibc prefers readers: with searches arriving back to back from several Python
// threads, an add() or remove() can wait indefinitely (seen: a writer finishing 15 of 150 updates in two
// minutes under steady search load). Here a waiting writer stops new readers from entering, so it runs
// as soon as the searches already inside have finished.
//
// A thread that already holds a shared lock (of any WriterPreferringMutex, e.g. a Python filter callable
// that searches the same index from inside a search) is let in even while a writer waits; otherwise it
// would wait for a writer that waits for it.
//
// Meets the SharedMutex requirements, so std::shared_lock / std::unique_lock work with it.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <shared_mutex>  // std::shared_lock for users of this lock

namespace annforge::parallel {

class WriterPreferringMutex {
 public:
  WriterPreferringMutex() = default;
  WriterPreferringMutex(const WriterPreferringMutex&) = delete;
  WriterPreferringMutex& operator=(const WriterPreferringMutex&) = delete;

  void lock() {
    std::unique_lock<std::mutex> guard(state_mutex_);
    ++writers_waiting_;
    writer_cv_.wait(guard, [this] { return !writer_active_ && readers_ == 0; });
    --writers_waiting_;
    writer_active_ = true;
  }

  bool try_lock() {
    std::lock_guard<std::mutex> guard(state_mutex_);
    if (writer_active_ || readers_ != 0) return false;
    writer_active_ = true;
    return true;
  }

  void unlock() {
    {
      std::lock_guard<std::mutex> guard(state_mutex_);
      writer_active_ = false;
    }
    // Waiting writers go first; readers re-check and wait again while one is queued.
    writer_cv_.notify_one();
    reader_cv_.notify_all();
  }

  void lock_shared() {
    std::unique_lock<std::mutex> guard(state_mutex_);
    const bool nested = shared_depth() > 0;
    reader_cv_.wait(guard, [this, nested] { return !writer_active_ && (nested || writers_waiting_ == 0); });
    ++readers_;
    ++shared_depth();
  }

  bool try_lock_shared() {
    std::lock_guard<std::mutex> guard(state_mutex_);
    if (writer_active_ || (writers_waiting_ != 0 && shared_depth() == 0)) return false;
    ++readers_;
    ++shared_depth();
    return true;
  }

  void unlock_shared() {
    bool wake_writer = false;
    {
      std::lock_guard<std::mutex> guard(state_mutex_);
      --readers_;
      wake_writer = readers_ == 0 && writers_waiting_ != 0;
    }
    --shared_depth();
    if (wake_writer) writer_cv_.notify_one();
  }

 private:
  // Shared locks this thread holds across all instances (nesting detection).
  static std::size_t& shared_depth() {
    thread_local std::size_t depth = 0;
    return depth;
  }

  std::mutex state_mutex_;
  std::condition_variable writer_cv_;
  std::condition_variable reader_cv_;
  std::size_t readers_ = 0;
  std::size_t writers_waiting_ = 0;
  bool writer_active_ = false;
};

}  // namespace annforge::parallel
