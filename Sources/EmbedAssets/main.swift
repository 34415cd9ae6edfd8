import Foundation

// Build tool of the AssetEmbed plugin: writes openapi.json and the dashboard's files as
// Swift string constants, so that the binary serves exactly what is in the repository.
// Arguments: OUTPUT.swift openapi.json [ui/FILE ...]
let args = CommandLine.arguments
guard args.count >= 3 else {
    FileHandle.standardError.write(Data("usage: EmbedAssets Assets.swift openapi.json [ui/FILE ...]\n".utf8))
    exit(2)
}

/// `text` as a Swift raw multi-line string literal: enough `#`s that neither the
/// closing delimiter nor an escape can occur inside.
func literal(_ text: String) -> String {
    var hashes = "#"
    while text.contains("\"\"\"" + hashes) || text.contains("\\" + hashes) { hashes += "#" }
    return "\(hashes)\"\"\"\n\(text)\n\"\"\"\(hashes)"
}

let openapi = try String(contentsOfFile: args[2], encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
var files: [String] = []
for path in args.dropFirst(3).sorted() {
    let name = URL(fileURLWithPath: path).lastPathComponent
    let text = try String(contentsOfFile: path, encoding: .utf8)
    files.append("        \"\(name)\": \(literal(text.hasSuffix("\n") ? String(text.dropLast()) : text)),")
}
let source = """
// Generated at build time by the AssetEmbed plugin from openapi.json and ui/: do not edit.
enum OpenAPIDocument {
    static let json = \(literal(openapi))
}

enum UIAssets {
    /// The dashboard's files (ui/), by name.
    static let files: [String: String] = [
\(files.isEmpty ? "        :" : files.joined(separator: "\n"))
    ]
}

"""
try source.write(toFile: args[1], atomically: true, encoding: .utf8)
