// What a piece of work cost: tokens processed, wall time, CPU-seconds, peak resident memory and
// energy. Energy comes from the kernel's RAPL counters (/sys/class/powercap/intel-rapl:N, which
// Linux also exposes on AMD CPUs) when they are readable, otherwise it is an estimate, CPU-seconds ×
// a configurable power per busy core, and says so. train, eval, compare, backtest and serve report it.

import Foundation
import Containers
import Distributed

/// The cost of one piece of work (a training run, an evaluation, one answer).
public struct Cost: Codable, Equatable, Sendable {
    /// Tokens processed (trained on, scored, or prompt + generated).
    public var tokens: Int
    public var wallSeconds: Double
    /// User + system CPU time of this process (of every rank's, for a data-parallel job).
    public var cpuSeconds: Double
    /// The process's peak resident set so far (VmHWM; the largest rank's for a data-parallel job).
    public var peakRSSBytes: Int
    public var energyJoules: Double
    /// "rapl": measured by the CPU package's RAPL counters (the whole package: every process on it);
    /// "estimate": `cpuSeconds` × `wattsPerCore`; "mixed": a data-parallel job whose ranks differ.
    public var energySource: String
    /// The power per busy core an estimate used (nil when measured).
    public var wattsPerCore: Double?

    public init(tokens: Int, wallSeconds: Double, cpuSeconds: Double, peakRSSBytes: Int, energyJoules: Double,
                energySource: String, wattsPerCore: Double?) {
        (self.tokens, self.wallSeconds, self.cpuSeconds, self.peakRSSBytes) = (tokens, wallSeconds, cpuSeconds, peakRSSBytes)
        (self.energyJoules, self.energySource, self.wattsPerCore) = (energyJoules, energySource, wattsPerCore)
    }

    /// A data-parallel job's cost from every rank's (each rank calls it): CPU time and energy summed,
    /// a package's RAPL energy shared among the ranks on this machine (they all read the same
    /// counter), the largest peak RSS; tokens and wall time as they are (already the job's). An
    /// energy from RAPL on some ranks and estimated on others says "mixed".
    public func summed(over comm: Communicator) throws -> Cost {
        guard comm.isDistributed else { return self }
        let rapl = energySource == "rapl"
        var slots = [Double](repeating: 0, count: 3 + comm.size)  // cpu, energy, ranks that measured, each rank's peak
        (slots[0], slots[1], slots[2]) = (cpuSeconds, rapl ? energyJoules / Double(max(comm.localSize, 1)) : energyJoules, rapl ? 1 : 0)
        slots[3 + comm.rank] = Double(peakRSSBytes)
        try comm.allReduceSum(&slots, what: "the all-reduce of the job's cost")
        var c = self
        (c.cpuSeconds, c.energyJoules, c.peakRSSBytes) = (slots[0], slots[1], Int(slots[3...].max() ?? 0))
        let measured = Int(slots[2])
        c.energySource = measured == comm.size ? "rapl" : measured == 0 ? "estimate" : "mixed"
        return c
    }

    enum CodingKeys: String, CodingKey {
        case tokens, wallSeconds = "wall_s", cpuSeconds = "cpu_s", peakRSSBytes = "peak_rss_bytes"
        case energyJoules = "energy_j", energySource = "energy_source", wattsPerCore = "watts_per_core"
    }

    public var isEstimate: Bool { energySource != "rapl" }
    /// Joules per token (0 without tokens).
    public var joulesPerToken: Double { tokens > 0 ? energyJoules / Double(tokens) : 0 }

    /// How the energy figure was obtained, for reports.
    public var energyNote: String {
        switch energySource {
        case "rapl": return "measured: RAPL counters of the CPU package (all processes on it)"
        case "mixed": return "mixed: RAPL counters where readable, CPU-seconds × watts per busy core elsewhere"
        default: return String(format: "estimate: CPU-seconds × %g W per busy core", wattsPerCore ?? 0)
        }
    }

    /// One line: "1234 tokens · 3.2 s · 6.1 CPU-s · peak 812 MiB · ≈61 J (estimate: …)".
    public var summary: String {
        let energy = String(format: "%@%.1f J", isEstimate ? "≈" : "", energyJoules)
        return counted(tokens, "token") + " · " + String(format: "%.2f s · %.2f CPU-s · peak %.0f MiB · ", wallSeconds, cpuSeconds,
                                             Double(peakRSSBytes) / 1_048_576) + energy + " (\(energyNote))"
    }

    /// The sum of costs of parts of one run (the peak is the largest; the source is shared).
    public static func total(_ parts: [Cost]) -> Cost? {
        guard let first = parts.first else { return nil }
        return parts.dropFirst().reduce(first) { a, b in
            Cost(tokens: a.tokens + b.tokens, wallSeconds: a.wallSeconds + b.wallSeconds, cpuSeconds: a.cpuSeconds + b.cpuSeconds,
                 peakRSSBytes: max(a.peakRSSBytes, b.peakRSSBytes), energyJoules: a.energyJoules + b.energyJoules,
                 energySource: a.energySource == b.energySource ? a.energySource : "estimate", wattsPerCore: a.wattsPerCore ?? b.wattsPerCore)
        }
    }
}

/// Measures the cost of the work done between its creation (or `restart`) and `reading`.
public final class CostMeter {
    /// The default power per busy core for estimates: a rough figure for a server or desktop core
    /// under load. Set it for your machine (`--watts-per-core`).
    public static let defaultWattsPerCore = 10.0

    /// One RAPL zone: a CPU package's energy counter (microjoules) and where it wraps.
    struct Zone {
        let energyPath: String
        let maxRange: UInt64
    }

    public let wattsPerCore: Double
    let zones: [Zone]
    private var startWall = Date()
    private var startCPU = 0.0
    /// Per zone: the last counter value read, and the microjoules counted since the start. The
    /// counters are read every `sampleSeconds` as well as at the ends: one wraps at
    /// max_energy_range_uj (about 262 kJ, under an hour at full load), and a delta between two
    /// reads can undo only one wrap.
    private var lastEnergy: [UInt64] = []
    private var energySinceStart: [UInt64] = []
    private var unreadable = false
    private let lock = NSLock()
    private var sampler: DispatchSourceTimer?
    static let sampleSeconds = 10

    /// - Parameters:
    ///   - wattsPerCore: power per busy core used when the RAPL counters cannot be read.
    ///   - powercapRoot: where the kernel's powercap zones are (tests point it at a fixture).
    public init(wattsPerCore: Double = CostMeter.defaultWattsPerCore, powercapRoot: String = "/sys/class/powercap") {
        self.wattsPerCore = wattsPerCore
        zones = Self.packageZones(powercapRoot)
        restart()
    }

    /// Whether energy is measured (RAPL readable) rather than estimated.
    public var measuresEnergy: Bool { !zones.isEmpty }

    deinit { sampler?.cancel() }

    /// Starts measuring anew from now.
    public func restart() {
        startWall = Date()
        startCPU = Self.processCPUSeconds()
        lock.withLock {
            lastEnergy = zones.map { Self.readCounter($0.energyPath) ?? 0 }
            energySinceStart = zones.map { _ in 0 }
            unreadable = false
        }
        if !zones.isEmpty && sampler == nil {
            let timer = DispatchSource.makeTimerSource(queue: .global(qos: .utility))
            timer.schedule(deadline: .now() + .seconds(Self.sampleSeconds), repeating: .seconds(Self.sampleSeconds))
            timer.setEventHandler { [weak self] in self?.sampleEnergy() }
            timer.resume()
            sampler = timer
        }
    }

    /// Adds each zone's energy since its last read (one wrap of the counter undone). A read that
    /// fails leaves the zone for the next one; `final`: the reading's own, which must succeed.
    func sampleEnergy(final: Bool = false) {
        lock.withLock {
            for (i, z) in zones.enumerated() {
                guard let now = Self.readCounter(z.energyPath) else { if final { unreadable = true }; continue }
                let last = lastEnergy[i]
                energySinceStart[i] &+= now >= last ? now - last : now &+ (z.maxRange &- last)
                lastEnergy[i] = now
            }
        }
    }

    /// The cost since the start, with `tokens` processed.
    public func reading(tokens: Int) -> Cost {
        let wall = Date().timeIntervalSince(startWall)
        let cpu = max(0, Self.processCPUSeconds() - startCPU)
        sampleEnergy(final: true)
        let (microjoules, failed) = lock.withLock { (energySinceStart.reduce(0, &+), unreadable) }
        let measured = !zones.isEmpty && !failed
        let joules = Double(microjoules) / 1e6
        return Cost(tokens: tokens, wallSeconds: wall, cpuSeconds: cpu, peakRSSBytes: peakResidentBytes(),
                    energyJoules: measured ? joules : cpu * wattsPerCore, energySource: measured ? "rapl" : "estimate",
                    wattsPerCore: measured ? nil : wattsPerCore)
    }

    /// The package zones (`intel-rapl:N`, not their sub-zones, which the package already counts, nor
    /// `psys`, which overlaps them) whose counters this process can read.
    static func packageZones(_ root: String) -> [Zone] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.sorted().compactMap { name -> Zone? in
            let parts = name.split(separator: ":")
            guard parts.count == 2, parts[0] == "intel-rapl", Int(parts[1]) != nil else { return nil }
            let dir = root + "/" + name
            let zoneName = (try? String(contentsOfFile: dir + "/name", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            guard zoneName != "psys", readCounter(dir + "/energy_uj") != nil else { return nil }
            return Zone(energyPath: dir + "/energy_uj", maxRange: readCounter(dir + "/max_energy_range_uj") ?? UInt64.max)
        }
    }

    static func readCounter(_ path: String) -> UInt64? {
        guard let s = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        return UInt64(s.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// User + system CPU time of this process (all threads).
    static func processCPUSeconds() -> Double {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }
}

/// Writes `cost` as a JSON object (its fields, plus "command" and `extra`'s keys) to `url`, atomically.
public func writeCostFile(_ cost: Cost, command: String, to url: URL, extra: [String: Any] = [:]) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    var obj = (try JSONSerialization.jsonObject(with: e.encode(cost))) as? [String: Any] ?? [:]
    obj["command"] = command
    obj.merge(extra) { _, b in b }
    let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
    let tmp = url.path + ".tmp-\(getpid())"
    do { try data.write(to: URL(fileURLWithPath: tmp)) } catch {
        throw CheckpointError(path: url.path, message: "cannot write the cost file: \((error as NSError).localizedDescription)")
    }
    try commitTemporary(tmp, to: url.path) { CheckpointError(path: url.path, message: $0) }
}

/// "1 token", "2 tokens": a count and its noun, plural (an added s) unless the count is 1.
public func counted(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }

/// The checkpoint attributes of a run's cost so far: this session's (`session`) added to the sessions
/// before a resume (`earlier`, as `recordedCost` read them), and the number of sessions.
func costAttributes(_ session: Cost, earlier: (cost: Cost, sessions: Int)?) -> [String: String] {
    let soFar = Cost.total([earlier?.cost, session].compactMap { $0 })!
    let e = JSONEncoder()
    e.outputFormatting = .sortedKeys
    return ["cost": (try? e.encode(soFar)).map { String(decoding: $0, as: UTF8.self) } ?? "", "cost_sessions": String((earlier?.sessions ?? 0) + 1)]
}

/// The run's cost so far and its sessions, as a checkpoint records them (`costAttributes`); nil
/// when it records none.
public func recordedCost(_ attributes: [String: String]) -> (cost: Cost, sessions: Int)? {
    guard let json = attributes["cost"], let c = try? JSONDecoder().decode(Cost.self, from: Data(json.utf8)) else { return nil }
    return (c, attributes["cost_sessions"].flatMap(Int.init) ?? 1)
}
