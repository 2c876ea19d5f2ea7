// Stopping a long run cleanly: Ctrl-C (SIGINT) or SIGTERM (what `kill`, a job scheduler or a
// container runtime sends before it kills) asks `train`, `compare` and `pretrain` to stop after the
// step in progress with the state saved, and `backtest` after the answer in progress with the report
// so far written. The same command with --resume goes on. A second signal ends the process at once.
import ArgumentParser
import Foundation
import Synchronization
import SwiftPEFT

/// The signal that asked the run in progress to stop; 0 until one does.
let stopSignal = Atomic<Int32>(0)

/// What a stop signal interrupts.
enum InterruptibleRun {
    /// `train`, `compare`, `pretrain`: after the step in progress, with the state saved (`Trainer.requestStop`).
    case training
    /// `backtest`: after the answer in progress, which then writes its report so far.
    case backtest
}

/// Installs the handlers of SIGINT and SIGTERM for `run`. Not for a data-parallel job, whose ranks
/// would stop at different steps: under mpirun the signals end the job as before.
func stopCleanlyOnSignals(_ run: InterruptibleRun) {
    guard !Communicator.world.isDistributed else { return }
    for s in [SIGINT, SIGTERM] {
        switch run {
        case .training: signal(s) { sig in Trainer.requestStop(); stopRequested(sig, training: true) }
        case .backtest: signal(s) { sig in stopRequested(sig, training: false) }
        }
    }
}

/// Called in a signal handler: records the signal, lets the next one end the process, and says what
/// happens (async-signal-safe: an atomic store, signal() and write()).
private func stopRequested(_ sig: Int32, training: Bool) {
    stopSignal.store(sig, ordering: .relaxed)
    signal(SIGINT, SIG_DFL)
    signal(SIGTERM, SIG_DFL)
    let m: StaticString
    switch (sig == SIGINT, training) {
    case (true, true): m = "\nCtrl-C: stopping after this step and saving the state (Ctrl-C again quits at once)\n"
    case (false, true): m = "\nSIGTERM: stopping after this step and saving the state (a second signal quits at once)\n"
    case (true, false): m = "\nCtrl-C: stopping after this answer and writing the report so far (Ctrl-C again quits at once)\n"
    case (false, false): m = "\nSIGTERM: stopping after this answer and writing the report so far (a second signal quits at once)\n"
    }
    _ = write(2, m.utf8Start, m.utf8CodeUnitCount)
}

/// The exit status of a run a signal stopped: 128 + the signal's number, as a shell reports a
/// command the signal ended (130 for Ctrl-C, 143 for SIGTERM).
var stoppedExitCode: ExitCode {
    let s = stopSignal.load(ordering: .relaxed)
    return ExitCode(128 + (s == 0 ? SIGINT : s))
}

/// Runs `body`; a run a signal stopped says where it stopped and exits with `stoppedExitCode`, not
/// as an error.
func exitingQuietlyOnInterrupt(_ body: () throws -> Void) throws {
    do { try body() } catch let e as TrainingInterrupted {
        FileHandle.standardError.write(Data("\(e)\n".utf8))
        throw stoppedExitCode
    }
}
