// Data-parallel training under Open MPI's mpirun, on this machine: 2 ranks × batch 2 against one
// process × batch 4 on the CLI fixtures (same seed and data), a rank killed mid-run, and the resume
// that follows it. Needs `mpirun` (Debian's openmpi-bin, installed by scripts/setup).

import Foundation
import XCTest
import TestSupport
import SwiftPEFT

final class DistributedTests: XCTestCase {
    var fx: CLIFixtures!
    var mpirun: String!

    override func setUpWithError() throws {
        fx = try CLIFixtures.shared()
        guard let m = executableOnPath("mpirun") else {
            try skipUnlessRequired("no mpirun on PATH; scripts/setup installs Open MPI (openmpi-bin, libopenmpi-dev)")
        }
        mpirun = m
    }

    /// Runs `executable args…` in the fixtures' folder (see `CLITests.launch`).
    func launch(_ executable: String, _ args: [String], timeout: TimeInterval = 300,
                whileRunning: ((Int32) -> Void)? = nil) throws -> CLIRun {
        try CLITests.launch(URL(fileURLWithPath: executable), args, in: fx.dir, timeout: timeout, whileRunning: whileRunning)
    }

    func train(ranks: Int, batch: Int, method: String, out: String, extra: [String] = [], mpiEnvironment: [String] = [],
               data: String? = nil, whileRunning: ((Int32) -> Void)? = nil) throws -> CLIRun {
        let args = ["train", "--method", method, "--model", fx.base, "--data", data ?? fx.jsonl, "--out", out, "--steps", "6",
                    "--seq-len", "32", "--batch-size", "\(batch)", "--eval-every", "100", "--warmup", "0", "--seed", "7"] + extra
        let swiftpeft = try CLITests.binary().path
        if ranks == 1 { return try launch(swiftpeft, args, whileRunning: whileRunning) }
        // A rank waiting in a collective yields its core rather than spin (the ranks fill the cores);
        // shared memory without the single-copy (ptrace) mechanism, which containers often forbid.
        return try launch(mpirun, ["--oversubscribe", "--allow-run-as-root", "--mca", "mpi_yield_when_idle", "1", "--mca", "btl_vader_single_copy_mechanism", "none",
                                   "-np", "\(ranks)"] + mpiEnvironment.flatMap { ["-x", $0] } + [swiftpeft] + args,
                          whileRunning: whileRunning)
    }

    func losses(_ dir: String) throws -> [Double] {
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        return text.split(separator: "\n").compactMap { line in
            ((try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any])?["loss"] as? Double
        }
    }

    /// The validation losses a run printed, before and after (4 decimals).
    func validationLosses(_ r: CLIRun) throws -> [Float] {
        r.stdout.split(separator: "\n").filter { $0.hasPrefix("validation loss") }.compactMap { line in
            line.split(separator: ":").last?.split(separator: " ").first.flatMap { Float($0) }
        }
    }

    /// The largest difference between two adapter files' tensors (same names required).
    func maxDifference(_ a: String, _ b: String) throws -> (max: Float, over1e5: Int, values: Int) {
        let (ta, _, _) = try HDF5Store.read(a), (tb, _, _) = try HDF5Store.read(b)
        XCTAssertEqual(Set(ta.keys), Set(tb.keys))
        var worst: Float = 0, over = 0, count = 0
        for (k, x) in ta {
            guard let y = tb[k] else { continue }
            for (u, v) in zip(x.toArray(), y.toArray()) {
                worst = max(worst, abs(u - v))
                if abs(u - v) > 1e-5 { over += 1 }
                count += 1
            }
        }
        return (worst, over, count)
    }

    /// 2 ranks × batch 2 train exactly what 1 process × batch 4 trains, for LoRA and prompt tuning:
    /// same loss curve and adapter within 1e-5 with SGD (its update is linear in the gradient, so
    /// the different summation order of the all-reduce stays at rounding level). With AdamW the
    /// loss curve matches as well; a value whose gradient is near zero can take the other sign's
    /// step (AdamW's first steps are ±lr whatever the gradient's size), so only the curve is held
    /// to 1e-5 there, and the number of such values is printed.
    func testTwoRanksTrainWhatOneProcessTrainsWithTheGlobalBatch() throws {
        for method in ["lora", "prompt"] {
            let sgd = ["--optimizer", "sgd", "--lr", "0.05"]
            let one = fx.path("dp-\(method)-1"), two = fx.path("dp-\(method)-2")
            let r1 = try train(ranks: 1, batch: 4, method: method, out: one, extra: sgd)
            XCTAssertEqual(r1.status, 0, r1.transcript)
            let r2 = try train(ranks: 2, batch: 2, method: method, out: two, extra: sgd)
            XCTAssertEqual(r2.status, 0, r2.transcript)
            // Bound by mpirun, a rank runs the cores it is bound to; unbound, cores / local ranks: never more.
            let line = try XCTUnwrap(r2.stdout.split(separator: "\n").first { $0.contains("data-parallel: 2 ranks × batch 2 (global batch 4), ") }, r2.transcript)
            let threads = Int(line.split(separator: ",").last!.split(separator: " ").first!) ?? 0
            XCTAssertTrue((1...max(1, ProcessInfo.processInfo.activeProcessorCount / 2)).contains(threads), String(line))
            XCTAssertEqual(r2.stdout.components(separatedBy: "trained in").count - 1, 1, "rank 0 alone reports:\n\(r2.transcript)")
            let (l1, l2) = (try losses(one), try losses(two))
            XCTAssertEqual(l1.count, 6)
            assertClose(l2.map(Float.init), l1.map(Float.init), rtol: 1e-5, atol: 1e-5, "\(method): loss curve")
            // The ranks score their shares of the validation rows: the losses of one process, before and after.
            let (v1, v2) = (try validationLosses(r1), try validationLosses(r2))
            XCTAssertEqual(v1.count, 2, r1.transcript)
            assertClose(v2, v1, rtol: 1e-5, atol: 1e-4, "\(method): validation losses")
            let d = try maxDifference(one + "/adapter.h5", two + "/adapter.h5")
            XCTAssertLessThanOrEqual(d.max, 1e-5, "\(method): adapters differ by \(d.max)")
            print("\(method), SGD: 2 ranks × 2 vs 1 × 4: loss curves within \(zip(l1, l2).map { abs($0 - $1) }.max()!), adapters within \(d.max)")
        }
        let one = fx.path("dp-adamw-1"), two = fx.path("dp-adamw-2")
        XCTAssertEqual(try train(ranks: 1, batch: 4, method: "lora", out: one, extra: ["--lr", "1e-2"]).status, 0)
        XCTAssertEqual(try train(ranks: 2, batch: 2, method: "lora", out: two, extra: ["--lr", "1e-2"]).status, 0)
        let (l1, l2) = (try losses(one), try losses(two))
        assertClose(l2.map(Float.init), l1.map(Float.init), rtol: 1e-5, atol: 1e-5, "lora, AdamW: loss curve")
        let d = try maxDifference(one + "/adapter.h5", two + "/adapter.h5")
        print("lora, AdamW: \(d.over1e5) of \(d.values) adapter values differ by more than 1e-5 (largest \(d.max))")
    }

    /// Each rank draws its own dropout masks. On a data file of one row repeated (unpacked, so every
    /// row is that example), 2 ranks × batch 1
    /// train what 1 process × batch 1 trains without dropout; with LoRA dropout they do not (with
    /// rank 0's masks on both ranks, as before, they did: rank 0 draws the one process's masks).
    func testRanksDrawTheirOwnDropoutMasks() throws {
        let line = try XCTUnwrap(try String(contentsOfFile: fx.jsonl, encoding: .utf8).split(separator: "\n").first)
        let same = fx.path("same-row.jsonl")
        try Array(repeating: String(line), count: 40).joined(separator: "\n").write(toFile: same, atomically: true, encoding: .utf8)
        func curve(ranks: Int, dropout: String) throws -> [Double] {
            let out = fx.path("dp-masks-\(ranks)-\(dropout)")
            let r = try train(ranks: ranks, batch: 1, method: "lora", out: out,
                              extra: ["--optimizer", "sgd", "--lr", "0.05", "--lora-dropout", dropout, "--packing", "false"], data: same)
            XCTAssertEqual(r.status, 0, r.transcript)
            return try losses(out)
        }
        let (one, two) = (try curve(ranks: 1, dropout: "0"), try curve(ranks: 2, dropout: "0"))
        assertClose(two.map(Float.init), one.map(Float.init), rtol: 1e-5, atol: 1e-5, "no dropout: the same rows, the same run")
        let (oneD, twoD) = (try curve(ranks: 1, dropout: "0.5"), try curve(ranks: 2, dropout: "0.5"))
        XCTAssertEqual(oneD.count, 6)
        XCTAssertGreaterThan(zip(oneD, twoD).map { abs($0 - $1) }.max() ?? 0, 1e-4, "rank 1 drew rank 0's masks: \(oneD) vs \(twoD)")
    }

    /// `compare` under mpirun trains every method data-parallel and rank 0 alone writes the report:
    /// its validation losses are those of one process with the global batch.
    func testCompareUnderMPIMatchesOneProcess() throws {
        let swiftpeft = try CLITests.binary().path
        func compare(ranks: Int, batch: Int, out: String) throws -> [MethodResult] {
            let args = ["compare", "--model", fx.base, "--data", fx.jsonl, "--methods", "lora,prompt", "--steps", "4", "--seq-len", "32",
                        "--batch-size", "\(batch)", "--eval-every", "2", "--optimizer", "sgd", "--lr", "0.05", "--seed", "7", "--out", out]
            let r = ranks == 1 ? try launch(swiftpeft, args)
                : try launch(mpirun, ["--oversubscribe", "--allow-run-as-root", "--mca", "mpi_yield_when_idle", "1", "--mca", "btl_vader_single_copy_mechanism", "none", "-np", "\(ranks)", swiftpeft] + args)
            XCTAssertEqual(r.status, 0, r.transcript)
            XCTAssertEqual(r.stdout.components(separatedBy: "report: ").count - 1, 1, "one report:\n\(r.transcript)")
            return try decodeCompareResults(Data(contentsOf: URL(fileURLWithPath: out + "/report/results.json")))
        }
        let one = try compare(ranks: 1, batch: 4, out: fx.path("dp-compare-1"))
        let two = try compare(ranks: 2, batch: 2, out: fx.path("dp-compare-2"))
        XCTAssertEqual(one.map(\.method), two.map(\.method))
        for (a, b) in zip(one, two) {
            assertClose(b.curve.map { Float($0.loss) }, a.curve.map { Float($0.loss) }, rtol: 1e-5, atol: 1e-5, "\(a.method): validation curve")
        }
    }

    /// A rank killed mid-run ends the job with a message on the surviving rank (not a hang), and
    /// `--resume` with the same number of ranks ends where an uninterrupted run ends, LoRA dropout
    /// included: every rank's masks follow from the seed, the step and the rank, not from a saved
    /// generator (which held rank 0's only).
    func testKilledRankEndsTheJobAndResumeMatchesAnUninterruptedRun() throws {
        // Enough steps that the kill (polled every 0.2 s) lands mid-run on a fast machine: 200 steps
        // ended before it on an AMD EPYC (Zen 5).
        let extra = ["--optimizer", "sgd", "--lr", "0.02", "--save-every", "10", "--steps", "2000", "--lora-dropout", "0.2"]
        let whole = fx.path("dp-whole"), broken = fx.path("dp-broken")
        XCTAssertEqual(try train(ranks: 2, batch: 2, method: "lora", out: whole, extra: extra).status, 0)
        var killed: Int32?
        let r = try train(ranks: 2, batch: 2, method: "lora", out: broken, extra: extra + ["--log-every", "1"]) { _ in
            // After the first checkpoint (step 10), which --resume needs: killed earlier, the job has none.
            guard killed == nil, FileManager.default.fileExists(atPath: broken + "/state.h5"),
                  ((try? self.losses(broken))?.count ?? 0) >= 12, let pid = Self.rank(1, runningWith: broken) else { return }
            kill(pid, SIGKILL)
            killed = pid
        }
        XCTAssertNotNil(killed, "rank 1 was never seen running:\n\(r.transcript)")
        XCTAssertNotEqual(r.status, 0, r.transcript)
        XCTAssertTrue(r.output.contains("rank 0 of 2"), "the surviving rank says why it stops:\n\(r.transcript)")
        XCTAssertTrue(r.output.contains("--resume"), r.transcript)
        let done = try losses(broken).count
        XCTAssertLessThan(done, 2000, "the run was cut short")
        print("rank 1 killed after step \(done); the job said:\n" + r.output.split(separator: "\n").filter { $0.contains("rank") || $0.contains("mpirun") }.joined(separator: "\n"))
        let alone = try train(ranks: 1, batch: 2, method: "lora", out: broken, extra: extra + ["--resume"])
        XCTAssertNotEqual(alone.status, 0, "another rank count cannot continue the run:\n\(alone.transcript)")
        XCTAssertTrue(alone.output.contains("written by a job of 2 rank(s)") && alone.output.contains("mpirun -np 2"), alone.transcript)
        let resumed = try train(ranks: 2, batch: 2, method: "lora", out: broken, extra: extra + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.transcript)
        let d = try maxDifference(whole + "/adapter.h5", broken + "/adapter.h5")
        XCTAssertEqual(d.max, 0, "the resumed job ends where the uninterrupted one ends")
        assertClose(try losses(broken).map(Float.init), try losses(whole).map(Float.init), rtol: 0, atol: 0, "loss curve")
        // A data-parallel job's checkpoints record no cost (it is every rank's): cost.json says it is
        // the last session's alone.
        let cost = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: broken + "/cost.json"))) as? [String: Any])
        XCTAssertEqual(cost["sessions"] as? Int, 1)
        XCTAssertTrue((cost["note"] as? String)?.contains("the last session's alone") == true, "\(cost)")
    }

    /// A rank that stops on an error ends the whole job at once (MPI_Abort), its message first:
    /// before, it waited in MPI_Finalize and the others in their next all-reduce until the step
    /// timeout (600 s by default; 120 s here, so the watchdog cannot be what ended this one).
    /// Open MPI's MPMD form gives rank 1 a data file that does not exist.
    func testARankStoppedByAnErrorEndsTheJobAtOnce() throws {
        let swiftpeft = try CLITests.binary().path
        let args = ["train", "--method", "lora", "--model", fx.base, "--out", fx.path("dp-error"), "--steps", "50",
                    "--seq-len", "32", "--batch-size", "2", "--eval-every", "100", "--warmup", "0", "--seed", "7"]
        let started = Date()
        let r = try launch(mpirun, ["--oversubscribe", "--allow-run-as-root", "--mca", "mpi_yield_when_idle", "1",
                                    "--mca", "btl_vader_single_copy_mechanism", "none", "-x", "SWIFTPEFT_MPI_TIMEOUT=120",
                                    "-np", "1", swiftpeft] + args + ["--data", fx.jsonl]
                                    + [":", "-np", "1", swiftpeft] + args + ["--data", fx.path("missing.jsonl")])
        XCTAssertNotEqual(r.status, 0, r.transcript)
        XCTAssertTrue(r.output.contains("missing.jsonl"), "the failing rank's error:\n\(r.transcript)")
        XCTAssertFalse(r.output.contains("no reply from the other ranks"), r.transcript)
        XCTAssertLessThan(Date().timeIntervalSince(started), 60, "ended at once, not by a timeout:\n\(r.transcript)")
    }

    /// A rank that loaded another job than rank 0 (here another learning rate; on two machines,
    /// another copy of the data) is refused before the first step, on every rank, with the rank
    /// and host named; other commands are refused under mpirun.
    func testRanksMustLoadRankZerosJob() throws {
        let swiftpeft = try CLITests.binary().path
        let args = ["train", "--method", "lora", "--model", fx.base, "--data", fx.jsonl, "--out", fx.path("dp-differ"), "--steps", "3",
                    "--seq-len", "32", "--batch-size", "2", "--eval-every", "100", "--warmup", "0", "--seed", "7"]
        let mpi = ["--oversubscribe", "--allow-run-as-root", "--mca", "mpi_yield_when_idle", "1", "--mca", "btl_vader_single_copy_mechanism", "none"]
        let r = try launch(mpirun, mpi + ["-np", "1", swiftpeft] + args + [":", "-np", "1", swiftpeft] + args + ["--lr", "0.5"])
        XCTAssertNotEqual(r.status, 0, r.transcript)
        XCTAssertTrue(r.output.contains("1 rank(s) loaded another base, other training data or other options than rank 0"), r.transcript)
        XCTAssertTrue(r.output.contains(" of 2 ("), "the rank and host:\n\(r.transcript)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: fx.path("dp-differ/adapter.h5")))
        let info = try launch(mpirun, mpi + ["-np", "2", swiftpeft, "info"])
        XCTAssertNotEqual(info.status, 0, info.transcript)
        XCTAssertTrue(info.output.contains("only train and compare run data-parallel"), info.transcript)
    }

    /// A rank that stops answering (stopped, not dead: a hung node) ends the job after the step
    /// timeout with a message from the rank left waiting.
    func testAHungRankEndsTheJobAfterTheStepTimeout() throws {
        let out = fx.path("dp-hung")
        var stopped: Int32?, stoppedAt = Date.distantFuture
        let started = Date()
        let r = try train(ranks: 2, batch: 2, method: "lora", out: out,
                          // Steps enough to outlast the stop: 200 once ran out (0.2 s) before rank 1 was stopped.
                          extra: ["--optimizer", "sgd", "--steps", "20000", "--save-every", "0", "--log-every", "1"],
                          mpiEnvironment: ["SWIFTPEFT_MPI_TIMEOUT=3"]) { _ in
            // Long after the 3 s timeout, the stopped rank is killed: mpirun's clean-up must not wait
            // on a stopped process (the message checked below comes only from the watchdog).
            if let pid = stopped, Date().timeIntervalSince(stoppedAt) > 30 { kill(pid, SIGKILL) }
            guard stopped == nil, ((try? self.losses(out))?.count ?? 0) >= 5, let pid = Self.rank(1, runningWith: out) else { return }
            kill(pid, SIGSTOP)
            (stopped, stoppedAt) = (pid, Date())
        }
        XCTAssertNotNil(stopped, "rank 1 was never seen running:\n\(r.transcript)")
        XCTAssertNotEqual(r.status, 0, r.transcript)
        XCTAssertTrue(r.output.contains("rank 0 of 2: no reply from the other ranks"), r.transcript)
        XCTAssertLessThan(Date().timeIntervalSince(started), 120, "ended by the timeout, not by the test")
        if let stopped { kill(stopped, SIGKILL) }
    }

    /// Rank 0's checkpoints, outputs and a resume's trim of metrics.jsonl take as long as its disk
    /// takes, and its metrics lines, written off the training thread, are flushed before each
    /// checkpoint: the other ranks wait for them past the step timeout (here a disk made slower than
    /// the 2 s timeout, 3 s per write), and the run ends well, with every output and line written.
    func testRanksWaitForRankZerosSlowWritesPastTheStepTimeout() throws {
        let out = fx.path("dp-slow-writes")
        let r = try train(ranks: 2, batch: 2, method: "lora", out: out, extra: ["--steps", "4", "--save-every", "2"],
                          mpiEnvironment: ["SWIFTPEFT_MPI_TIMEOUT=2", "SWIFTPEFT_FAULT_SLOW_WRITES=3"])
        XCTAssertEqual(r.status, 0, r.transcript)
        XCTAssertFalse(r.output.contains("no reply from the other ranks"), r.transcript)
        for file in ["adapter.h5", "state.h5", "cost.json", "metrics.jsonl"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + file), file + "\n" + r.transcript)
        }
        XCTAssertEqual(try losses(out).count, 4)
        // A resume: rank 0 trims metrics.jsonl before the first step, as slowly.
        let more = try train(ranks: 2, batch: 2, method: "lora", out: out, extra: ["--steps", "5", "--save-every", "2", "--resume"],
                             mpiEnvironment: ["SWIFTPEFT_MPI_TIMEOUT=2", "SWIFTPEFT_FAULT_SLOW_WRITES=3"])
        XCTAssertEqual(more.status, 0, more.transcript)
        XCTAssertFalse(more.output.contains("no reply from the other ranks"), more.transcript)
        XCTAssertEqual(try losses(out).count, 5)
    }

    /// The pid of the `swiftpeft` process that is rank `rank` of a job writing to `out`.
    static func rank(_ rank: Int, runningWith out: String) -> Int32? {
        guard let pids = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
        for p in pids {
            guard let pid = Int32(p),
                  let cmd = FileManager.default.contents(atPath: "/proc/\(p)/cmdline"),
                  String(decoding: cmd, as: UTF8.self).contains(out),
                  let env = FileManager.default.contents(atPath: "/proc/\(p)/environ") else { continue }
            let vars = env.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if vars.contains("OMPI_COMM_WORLD_RANK=\(rank)") && !String(decoding: cmd, as: UTF8.self).hasPrefix("mpirun") { return pid }
        }
        return nil
    }
}
