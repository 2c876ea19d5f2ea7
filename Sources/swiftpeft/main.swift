// swiftpeft: the command-line client of the SwiftPEFT library. Thin: parses, calls, prints.
import ArgumentParser
import Foundation
import SwiftPEFT

struct SwiftPEFT: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftpeft",
        abstract: "Parameter-efficient fine-tuning of decoder-only language models on the CPU.",
        version: "0.1.0",
        subcommands: [Info.self, Pretrain.self, Train.self, Eval.self, Preview.self, Generate.self, Merge.self, Export.self, Convert.self, Compare.self, Backtest.self, Serve.self, Plot.self, Inspect.self, Bench.self])
}

/// Prints the versions and the BLAS kernel in use.
struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the library versions and the OpenBLAS kernel in use.",
        discussion: "Example:\n  swiftpeft info")

    func run() throws {
        print("swiftpeft \(SwiftPEFT.configuration.version)")
        print("OpenBLAS core: \(BLASCore.current)")
        print("OpenBLAS core choice: \(BLASCore.summary)")
        print("OpenBLAS sgemm values: \(BLASCore.splitsKeepValues ? "the same however a product is cut into calls" : "can move by an ulp with how a product is cut into calls (this core's edge kernels): kept quantized blocks match the Float32 load within rounding")")
        print("threads: \(Threads.summary)")
        print("HDF5: \(hdf5Version)")
        let hub = HubCache.standard
        if let repos = hub.repositories() {
            func some(_ k: HubCache.Kind, _ one: String) -> String {
                let r = repos[k] ?? []
                return "\(r.count) \(one)\(r.count == 1 ? "" : "s")" + (r.isEmpty ? "" : " (" + r.prefix(5).joined(separator: ", ") + (r.count > 5 ? ", …" : "") + ")")
            }
            print("Hugging Face cache: \(hub.folder): \(some(.model, "model")), \(some(.dataset, "data set")); --model, --adapter and --data take their ids")
        } else {
            print("Hugging Face cache: \(hub.folder) (none yet; `hf download ORG/NAME` fills it, and --model, --adapter and --data then take the id)")
        }
        let online = ProcessInfo.processInfo.activeProcessorCount
        print("cores: \(online)\(Threads.available < online ? " (\(Threads.available) allowed by this process's CPU affinity)" : "")")
        print("CPU: \(Machine.cpuModel)")
        print("kernels: \(Machine.kernelBuild)")
        print("bf16 products: \(BF16Copy.summary)")
    }
}

/// A problem found while running a command: printed as "Error: …" without the usage text.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The texts of `--stop` (generate, backtest) with `\n` read as a newline, as the help says; an empty one is
/// refused, since it would never end `what` ("the output", "an answer").
func stopTexts(_ given: [String], ending what: String) throws -> [String] {
    guard !given.contains(where: \.isEmpty) else { throw CLIError("--stop is given an empty text, which would never end \(what)") }
    return given.map { $0.replacingOccurrences(of: "\\n", with: "\n") }
}

/// `--columns`' map (none when not given), its errors as the command line's.
func parseColumns(_ text: String?, keys: [String]) throws -> ColumnMap {
    guard let text else { return ColumnMap() }
    do { return try ColumnMap(parsing: text, keys: keys) } catch let e as TrainingError { throw CLIError(e.message) }
}

/// The arguments with each negative number after a long option joined to it (`--lr -1` becomes
/// `--lr=-1`): ArgumentParser reads a separate "-1" as a flag and reports the value as missing,
/// where the user gave one. No option of this tool is named by a digit, and "--" ends the options.
func joiningNegativeNumbers(_ arguments: [String]) -> [String] {
    var out: [String] = []
    for argument in arguments {
        if let last = out.last, last.hasPrefix("--"), last.count > 2, !last.contains("="), !out.contains("--"),
           argument.hasPrefix("-"), argument.count > 1, Double(argument) != nil {
            out[out.count - 1] = last + "=" + argument
        } else {
            out.append(argument)
        }
    }
    return out
}

/// Options that name a file or folder. Given an empty value, one would resolve to the current
/// folder (`export --out ''` wrote there) or fail late naming no path.
let pathOptions: Set<String> = ["--out", "--model", "--data", "--val-data", "--adapter", "--adapters", "--chat-template",
                                "--config", "--method-config", "--prompts"]

/// The first path option given an empty (or blank) value, if any; "--" ends the options.
func emptyPathOption(_ arguments: [String]) -> String? {
    for (i, argument) in arguments.enumerated() {
        if argument == "--" { return nil }
        let (name, value): (String, String?) = argument.firstIndex(of: "=").map { (String(argument[..<$0]), String(argument[argument.index(after: $0)...])) }
            ?? (argument, i + 1 < arguments.count ? arguments[i + 1] : nil)
        if pathOptions.contains(name), let value, value.trimmingCharacters(in: .whitespaces).isEmpty { return name }
    }
    return nil
}

// Each line reaches a log file or a pipe when it is printed (a training run under nohup, `tail -f`,
// a killed run's log), not when a 4 KiB buffer fills or the process exits.
setvbuf(stdout, nil, _IOLBF, 0)
BLASCore.selectBest()  // before any work: may re-execute with OPENBLAS_CORETYPE set
do {
    var command = try SwiftPEFT.parseAsRoot(joiningNegativeNumbers(Array(CommandLine.arguments.dropFirst())))
    if let option = emptyPathOption(Array(CommandLine.arguments.dropFirst())) {
        throw CLIError("\(option) is given an empty value")
    }
    let (launched, openMPI) = Communicator.launchedProcesses
    if launched > 1 && !(command is Train || command is Compare) {
        throw CLIError("\(launched) processes were started (mpirun or srun), but only train and compare run data-parallel: "
            + "each process would do the whole job, writing the same outputs. Run this command once, without a launcher")
    }
    if launched > 1 && !openMPI {
        throw CLIError("\(launched) processes were started by a launcher other than Open MPI's mpirun (srun or MPICH's mpiexec), "
            + "which this build does not join: each would train alone. Start the job with mpirun")
    }
    try command.run()
} catch let e as NSError where e.domain == NSCocoaErrorDomain || e.domain == NSPOSIXErrorDomain {
    // A file-system error the library did not wrap: a sentence with the path, not an NSError dump.
    let path = (e.userInfo[NSFilePathErrorKey] as? String) ?? (e.userInfo[NSURLErrorKey] as? URL)?.path
    let rank = Communicator.world.isDistributed ? Communicator.world.name + ": " : ""
    FileHandle.standardError.write(Data("\(rank)Error: \(path.map { "\($0): " } ?? "")\(e.localizedDescription)\n".utf8))
    Communicator.world.abortJob(exitCode: 1)
    exit(1)
} catch {
    // Printed first (the message is the user's answer), then the other ranks of a job are ended.
    if Communicator.world.isDistributed && SwiftPEFT.exitCode(for: error) != .success {
        FileHandle.standardError.write(Data((Communicator.world.name + ": " + SwiftPEFT.fullMessage(for: error) + "\n").utf8))
        Communicator.world.abortJob(exitCode: SwiftPEFT.exitCode(for: error).rawValue)
    }
    SwiftPEFT.exit(withError: error)
}
