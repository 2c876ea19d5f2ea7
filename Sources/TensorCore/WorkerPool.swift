// The threads that run the kernels' parallel loops, split GEMMs and attention heads. Workers spin
// for a while after each job before they sleep, so the back-to-back jobs of a training or
// decoding step start at once on every core: `DispatchQueue.concurrentPerform` wakes a sleeping
// worker for each call, and a 30 µs task took 92 µs on 2 cores that way (measured on this machine).
// The spin outlasts the serial gaps of a step: with 100 µs, waking the sleeping worker for each
// split GEMM of a `small` LoRA step left the calling thread waiting for its other half in 7% of
// the `perf` samples (1.2% with 2 ms); `swiftpeft bench --method lora` with 2 ms against 100 µs,
// alternated: smollm2 1.17× faster (median of 7 pairs), small 1.10× (16), tiny 1.02× (6)
// (docs/benchmarks.md, "Worker spin").

import Foundation
import Synchronization

/// A fixed pool of worker threads that runs `count` tasks with the calling thread.
final class WorkerPool: @unchecked Sendable {
    /// One worker per core beyond the calling thread.
    static let shared = WorkerPool(workers: max(0, ProcessInfo.processInfo.activeProcessorCount - 1))

    /// How long an idle worker spins for the next job before it sleeps (yielding its core to any
    /// other runnable thread every 64 polls).
    private static let spinNanoseconds: UInt64 = 2_000_000

    private let condition = NSCondition()
    private let generation = Atomic<Int>(0)  // bumped (under `condition`) for each job
    private let nextTask = Atomic<Int>(0)
    private let finished = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    /// True while a `run` is spread over the workers (its tasks may be running anywhere).
    var isRunning: Bool { busy.load(ordering: .relaxed) }
    // The current job; written under `condition` only while no worker is active.
    private var body: ((Int) -> Void)?
    private var count = 0
    private let active = Atomic<Int>(0)  // workers between taking a job and leaving it (taken under `condition`)
    private var sleepers = 0

    /// The workers' thread name (at most 15 bytes, Linux's limit).
    static let threadName = "swiftpeft-work"

    /// Names the calling thread `threadName`, as `top -H`, perf and /proc/self/task/*/comm show it
    /// (pthread_setname_np is not visible to Swift on Linux; its /proc file does the same).
    private static func nameThisThread() {
        let fd = open("/proc/thread-self/comm", O_WRONLY)
        guard fd >= 0 else { return }
        _ = threadName.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    init(workers: Int) {
        for _ in 0..<workers {
            var thread = pthread_t()
            let context = Unmanaged.passUnretained(self).toOpaque()
            pthread_create(&thread, nil, { context in
                WorkerPool.nameThisThread()
                Unmanaged<WorkerPool>.fromOpaque(context!).takeUnretainedValue().workerLoop()
                return nil
            }, context)
            pthread_detach(thread)
        }
    }

    /// Runs `body(0..<count)` on the workers and the calling thread, and returns when every task
    /// has ended. A call made while another runs (nested, or from a second thread) runs its tasks
    /// one after another on the calling thread.
    func run(_ count: Int, _ body: (Int) -> Void) {
        guard count > 1, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            for i in 0..<count { body(i) }
            return
        }
        defer { busy.store(false, ordering: .releasing) }
        withoutActuallyEscaping(body) { body in
            condition.lock()
            self.body = body
            self.count = count
            nextTask.store(0, ordering: .relaxed)
            finished.store(0, ordering: .relaxed)
            generation.add(1, ordering: .releasing)
            if sleepers > 0 { condition.broadcast() }
            condition.unlock()
            take(body, count)
            while finished.load(ordering: .acquiring) < count {}  // the workers' last tasks
            // Workers join only under the lock: once it is held with none active, none can reach
            // `body` (it lives on this stack) after it is cleared.
            condition.lock()
            while active.load(ordering: .acquiring) > 0 {  // a late joiner leaves with nothing to do
                condition.unlock()
                condition.lock()
            }
            self.body = nil
            condition.unlock()
        }
    }

    /// Runs tasks of the current job until none is left.
    private func take(_ body: (Int) -> Void, _ count: Int) {
        while true {
            let i = nextTask.wrappingAdd(1, ordering: .relaxed).oldValue
            guard i < count else { return }
            body(i)
            finished.add(1, ordering: .releasing)
        }
    }

    private func workerLoop() {
        var seen = 0
        while true {
            // Spin for the next job, then sleep until one is published.
            let start = DispatchTime.now().uptimeNanoseconds
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins += 1
                if spins & 63 == 0 {
                    if DispatchTime.now().uptimeNanoseconds - start > Self.spinNanoseconds { break }
                    sched_yield()  // an OpenBLAS thread waiting for this core gets it
                }
            }
            condition.lock()
            while generation.load(ordering: .acquiring) == seen {
                sleepers += 1
                condition.wait()
                sleepers -= 1
            }
            seen = generation.load(ordering: .acquiring)
            guard body != nil else {  // the job already ended
                condition.unlock()
                continue
            }
            active.add(1, ordering: .relaxed)
            condition.unlock()
            joinJob()
            active.subtract(1, ordering: .releasing)
        }
    }

    /// Runs tasks of the published job; its reference to the job's closure ends with this call.
    @inline(never)
    private func joinJob() {
        guard let body else { return }
        take(body, count)
    }
}
