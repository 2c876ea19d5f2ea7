// Help texts that read well in an 80-column terminal. ArgumentParser wraps each line of a discussion
// to the terminal on its own, so a paragraph written over several source lines came out ragged, and a
// long example command was cut mid-option with nothing to show it goes on.
import Foundation

/// `text` laid out for a command's discussion: the lines of a paragraph (lines that are not indented)
/// joined into one, for ArgumentParser to wrap once; a heading (a line ending in ":" before an indented
/// or empty line) and a line that starts with an option ("--precision bf16 …") begin their own. An
/// indented line wider than `width` is cut: a command (`swiftpeft …`, `curl …`, or the line after a
/// `\`) before one of its options, with a shell line continuation, so it stays one command to copy;
/// other text at a space, its continuation indented under it.
func helpText(_ text: String, width: Int = 79) -> String {
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { String($0.reversed().drop { $0 == " " }.reversed()) }
    var out: [String] = [], paragraph: [String] = []
    func flush() {
        if !paragraph.isEmpty { out.append(paragraph.joined(separator: " ")) }
        paragraph = []
    }
    for (k, line) in lines.enumerated() {
        let next = k + 1 < lines.count ? lines[k + 1] : ""
        if line.isEmpty {
            flush()
            out.append("")
        } else if line.first == " " {
            flush()
            let continued = out.last?.hasSuffix("\\") == true
            out += cutHelpLine(line, width: width, isCommand: continued || isHelpCommand(line))
        } else if line.hasSuffix(":") && (next.isEmpty || next.first == " ") {
            flush()
            out.append(line)
        } else {
            if line.hasPrefix("--") { flush() }
            paragraph.append(line)
        }
    }
    flush()
    return out.joined(separator: "\n")
}

/// Whether an indented help line is a shell command to copy.
private func isHelpCommand(_ line: String) -> Bool {
    let words = line.split(separator: " ")
    guard let i = words.firstIndex(where: { !$0.contains("=") }) else { return false }  // VAR=value prefixes
    return ["swiftpeft", "curl", "python3", "mpirun"].contains(String(words[i]))
}

/// One indented line cut to `width` columns: a command before its options (" \" at each cut, the
/// rest indented 4 more), other text at spaces (indented 4 more); a piece that cannot be cut stays whole.
private func cutHelpLine(_ line: String, width: Int, isCommand: Bool) -> [String] {
    guard line.count > width else { return [line] }
    let indent = String(repeating: " ", count: line.prefix { $0 == " " }.count)
    let body = String(line.dropFirst(indent.count))
    // Commands break before " -x"/" --x" (a trailing "# comment" goes with the last piece); text at spaces.
    var pieces: [String] = []
    if isCommand {
        var current = ""
        for word in body.split(separator: " ", omittingEmptySubsequences: false).map(String.init) {
            if word.hasPrefix("-") && !current.isEmpty && !current.contains(" #") {
                pieces.append(current)
                current = word
            } else {
                current += current.isEmpty ? word : " " + word
            }
        }
        pieces.append(current)
    } else {
        pieces = body.split(separator: " ").map(String.init)
    }
    let more = isCommand ? " \\" : ""
    var out: [String] = [], current = ""  // the line being filled, without its indentation
    for piece in pieces {
        let lead = out.isEmpty ? indent : indent + "    "
        if !current.isEmpty && lead.count + current.count + 1 + piece.count + more.count > width {
            out.append(lead + current + more)
            current = piece
        } else {
            current = current.isEmpty ? piece : current + " " + piece
        }
    }
    out.append((out.isEmpty ? indent : indent + "    ") + current)
    return out
}
