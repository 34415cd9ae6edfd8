import Foundation

// Build tool of the OpenAPIEmbed plugin: writes the text of openapi.json (argument 1)
// as a Swift string constant into the file named by argument 2.
let args = CommandLine.arguments
guard args.count == 3 else {
    FileHandle.standardError.write(Data("usage: EmbedOpenAPI openapi.json OpenAPIDocument.swift\n".utf8))
    exit(2)
}
let text = try String(contentsOfFile: args[1], encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
var hashes = "#"
while text.contains("\"\"\"" + hashes) { hashes += "#" }
let source = """
// Generated at build time from openapi.json by the OpenAPIEmbed plugin: do not edit.
enum OpenAPIDocument {
    static let json = \(hashes)\"\"\"
\(text)
\"\"\"\(hashes)
}

"""
try source.write(toFile: args[2], atomically: true, encoding: .utf8)
