// Data-parallel training over MPI (Open MPI): which rank this process is, and the all-reduces a
// step needs. A process started by `mpirun` joins the job's world; any other process is a world of
// one and never calls into MPI. A rank that stops (killed, crashed) must not leave the others
// waiting: collectives return errors instead of aborting, a watchdog ends a rank that has waited
// longer than the step timeout for the others, and the SIGTERM that `mpirun` sends to the
// survivors prints why before the rank exits.

import CMPI
import Foundation
import Synchronization

/// A failed collective: which rank, what it was doing and MPI's message.
public struct DistributedError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// The processes of one data-parallel job and the all-reduces between them.
public final class Communicator: @unchecked Sendable {
    /// This process's rank (0 ..< size); rank 0 writes checkpoints, metrics and the progress bar.
    public let rank: Int
    /// Processes in the job (1 without `mpirun`).
    public let size: Int
    /// Processes of the job on this machine (they share its cores).
    public let localSize: Int
    /// Seconds a rank waits in one collective before it ends the job (`SWIFTPEFT_MPI_TIMEOUT`,
    /// default 600): long enough for rank 0's evaluations, short next to a hang. Waits for rank 0's
    /// writes (`barrier(what:patient:)`) have no limit. 0 or less: no limit.
    public let timeoutSeconds: Double

    /// True for rank 0 (and for a process without `mpirun`).
    public var isLeader: Bool { rank == 0 }
    /// True when more than one process trains.
    public var isDistributed: Bool { size > 1 }

    private let waitingSince = Atomic<UInt64>(0)  // uptime ns when the current collective began; 0 outside
    private let waitingFor = Mutex("")  // what the current collective is (read by the watchdog's thread)

    /// The job's world: MPI's when this process was started by `mpirun` (Open MPI sets
    /// `OMPI_COMM_WORLD_SIZE`), otherwise a world of one. MPI is initialized on first use.
    public static let world: Communicator = {
        let env = ProcessInfo.processInfo.environment
        guard env["OMPI_COMM_WORLD_SIZE"] != nil else { return Communicator(single: ()) }
        return Communicator(mpi: env)
    }()

    /// The processes a launcher started together with this one, from its environment, before MPI
    /// starts: Open MPI's mpirun (`OMPI_COMM_WORLD_SIZE`), Slurm's srun (`SLURM_STEP_NUM_TASKS`),
    /// MPICH's mpiexec (`PMI_SIZE`); 1 when none did.
    public static var launchedProcesses: (count: Int, openMPI: Bool) {
        let env = ProcessInfo.processInfo.environment
        if let n = env["OMPI_COMM_WORLD_SIZE"].flatMap(Int.init) { return (n, true) }
        let others = ["SLURM_STEP_NUM_TASKS", "PMI_SIZE"].compactMap { env[$0].flatMap(Int.init) }
        return (others.max() ?? 1, false)
    }

    /// "rank r of n (host)" for messages of a distributed job.
    public var name: String {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        return "rank \(rank) of \(size) (\(String(cString: host)))"
    }

    private init(single: Void) {
        (rank, size, localSize, timeoutSeconds) = (0, 1, 1, 0)
    }

    private init(mpi env: [String: String]) {
        var provided: Int32 = 0
        var argc: Int32 = 0
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = nil
        let rc = MPI_Init_thread(&argc, &argv, Int32(MPI_THREAD_FUNNELED), &provided)
        if rc != MPI_SUCCESS {
            FileHandle.standardError.write(Data("swiftpeft: MPI_Init failed (\(Communicator.errorString(rc))); is this process started by Open MPI's mpirun?\n".utf8))
            exit(70)
        }
        MPI_Comm_set_errhandler(swiftpeft_mpi_comm_world(), swiftpeft_mpi_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(swiftpeft_mpi_comm_world(), &r)
        MPI_Comm_size(swiftpeft_mpi_comm_world(), &s)
        rank = Int(r)
        size = Int(s)
        localSize = env["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap(Int.init) ?? 1
        timeoutSeconds = env["SWIFTPEFT_MPI_TIMEOUT"].flatMap(Double.init) ?? 600
        atexit { Communicator.finalizeAtExit() }
        installSignalMessage()
        startWatchdog()
    }

    nonisolated(unsafe) private static var finalized = false
    private static func finalizeAtExit() {
        var initialized: Int32 = 0, done: Int32 = 0
        MPI_Initialized(&initialized)
        MPI_Finalized(&done)
        if initialized != 0 && done == 0 && !finalized {
            finalized = true
            MPI_Finalize()
        }
    }

    /// Ends every rank of the job at once (MPI_Abort), for a rank that stops on an error: the
    /// others would otherwise wait in their next collective until the watchdog's timeout, and this
    /// rank in MPI_Finalize for them. Does nothing in a single process.
    public func abortJob(exitCode: Int32) {
        guard isDistributed else { return }
        Communicator.finalized = true  // no MPI_Finalize at exit
        MPI_Abort(swiftpeft_mpi_comm_world(), exitCode)
    }

    /// Sums `count` floats at `buffer` over every rank, in place; every rank gets the sum.
    /// `what` names the step and the data for error messages. MPI counts in Int32, so a buffer of
    /// more values goes in pieces of at most `maxPiece`.
    public func allReduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int, what: @autoclosure () -> String) throws {
        guard isDistributed, count > 0 else { return }
        var start = 0
        while start < count {
            let n = min(Communicator.maxPiece, count - start)
            try collective(what()) {
                MPI_Allreduce(swiftpeft_mpi_in_place(), buffer + start, Int32(n), swiftpeft_mpi_float(), swiftpeft_mpi_sum(), swiftpeft_mpi_comm_world())
            }
            start += n
        }
    }

    /// The most values one MPI call carries (its count is an Int32).
    static let maxPiece = Int(Int32.max) / 2

    /// Sums `values` over every rank, in place (counts and loss sums, in double precision).
    public func allReduceSum(_ values: inout [Double], what: @autoclosure () -> String) throws {
        guard isDistributed, !values.isEmpty else { return }
        let n = Int32(values.count)
        try values.withUnsafeMutableBufferPointer { p in
            try collective(what()) {
                MPI_Allreduce(swiftpeft_mpi_in_place(), p.baseAddress, n, swiftpeft_mpi_double(), swiftpeft_mpi_sum(), swiftpeft_mpi_comm_world())
            }
        }
    }

    /// How many ranks hold another `text` than rank 0's (0 in a single process); every rank gets
    /// the count. Compares a 52-bit hash of the text, exact in the Double an all-reduce carries.
    public func ranksDiffering(from text: String, what: @autoclosure () -> String) throws -> Int {
        guard isDistributed else { return 0 }
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
        let mine = Double(hash & ((1 << 52) - 1))
        var leader = [isLeader ? mine : 0]
        try allReduceSum(&leader, what: "\(what()): rank 0's value")
        var differing = [leader[0] == mine ? 0.0 : 1.0]
        try allReduceSum(&differing, what: "\(what()): the comparison")
        return Int(differing[0])
    }

    /// Waits until every rank arrives here. `patient`: without the step timeout, for the other
    /// ranks' wait while rank 0 writes checkpoints and outputs, which takes as long as its disk takes
    /// (a rank 0 that fails there ends the job through `mpirun`, as any rank that stops does).
    public func barrier(what: @autoclosure () -> String, patient: Bool = false) throws {
        guard isDistributed else { return }
        try collective(what(), patient: patient) { MPI_Barrier(swiftpeft_mpi_comm_world()) }
    }

    private func collective(_ what: String, patient: Bool = false, _ call: () -> Int32) throws {
        waitingFor.withLock { $0 = what }
        waitingSince.store(patient ? 0 : DispatchTime.now().uptimeNanoseconds, ordering: .releasing)  // 0: the watchdog leaves it
        let rc = call()
        waitingSince.store(0, ordering: .releasing)
        guard rc == MPI_SUCCESS else {
            throw DistributedError(message: "rank \(rank) of \(size): \(what) failed: \(Communicator.errorString(rc)); a rank has likely stopped. The last checkpoint is kept: run again with --resume and the same -np.")
        }
    }

    static func errorString(_ code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: Int(swiftpeft_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        MPI_Error_string(code, &buffer, &length)
        return String(cString: buffer)
    }

    /// Ends this rank when one collective has waited longer than `timeoutSeconds`.
    private func startWatchdog() {
        let thread = Thread { [self] in
            while true {
                Thread.sleep(forTimeInterval: 0.5)
                let since = waitingSince.load(ordering: .acquiring)
                guard since > 0, timeoutSeconds > 0 else { continue }
                let waited = Double(DispatchTime.now().uptimeNanoseconds - since) / 1e9
                if waited > timeoutSeconds {
                    FileHandle.standardError.write(Data("swiftpeft: rank \(rank) of \(size): no reply from the other ranks for \(Int(waited)) s in \(waitingFor.withLock { $0 }) (SWIFTPEFT_MPI_TIMEOUT \(Int(timeoutSeconds)) s): a rank has stopped or the network is down; ending this rank. The last checkpoint is kept: run again with --resume and the same -np.\n".utf8))
                    _exit(75)
                }
            }
        }
        thread.start()
    }

    /// `mpirun` sends SIGTERM to the other ranks when one ends abnormally: say so before exiting.
    private func installSignalMessage() {
        Communicator.signalMessage = strdup("swiftpeft: rank \(rank) of \(size): stopped by mpirun (SIGTERM), most likely because another rank ended (see mpirun's message). The last checkpoint is kept: run again with --resume and the same -np.\n")
        signal(SIGTERM) { _ in
            if let m = Communicator.signalMessage { _ = write(2, m, strlen(m)) }
            _exit(143)
        }
    }
    nonisolated(unsafe) private static var signalMessage: UnsafeMutablePointer<CChar>?
}
