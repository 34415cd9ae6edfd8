import ArgumentParser
import Foundation

/// `sandpit mcp ARGS`: runs `sandpit-mcp ARGS` (installed next to `sandpit`) in this
/// process's place, so that an assistant's configuration can name either.
struct MCPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mcp",
        abstract: "Serve the Model Context Protocol on stdin/stdout (runs sandpit-mcp, installed next to sandpit).")

    @Argument(parsing: .captureForPassthrough, help: "sandpit-mcp's options: [--server unix:PATH | http://HOST:PORT]")
    var arguments: [String] = []

    func run() throws {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let path = (exe as NSString).deletingLastPathComponent + "/sandpit-mcp"
        let argv = [path] + arguments
        let cargs = argv.map { strdup($0) } + [nil]
        execv(path, cargs)
        FileHandle.standardError.write(Data("sandpit: cannot run \(path): \(String(cString: strerror(errno)))\n".utf8))
        throw ExitCode(127)
    }
}
