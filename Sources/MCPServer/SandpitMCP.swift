import ArgumentParser
import Foundation
import Logging
import MCP
import Sandbox
import Service

/// What the MCP tools act on: a running service (`--server`), or a sandbox in this
/// process.
protocol MCPBackend: Sendable {
    func run(code: String, timeLimit: Double?) async throws -> ExecutionResult
    func sessionCreate(name: String?) async throws -> (id: String, name: String)
    func sessionExecute(_ session: String, code: String, timeLimit: Double?) async throws -> ExecutionResult
    func sessionUpload(_ session: String, path: String, bytes: [UInt8]) async throws
    func sessionDownload(_ session: String, path: String) async throws -> [UInt8]
    func sessionClose(_ session: String) async throws
    func shutdown() async
}

struct ToolFailure: Error, CustomStringConvertible {
    let description: String
}

/// The tools over HTTP to `sandpit serve`.
struct RemoteBackend: MCPBackend {
    let server: String
    let token = ProcessInfo.processInfo.environment["SANDPIT_TOKEN"]

    func call(_ method: String, _ path: String, body: [UInt8] = [], contentType: String = "application/json",
              expect: Set<Int> = [200]) async throws -> [UInt8] {
        try await Remote.call(server: server, method: method, path: path, body: body, contentType: contentType, expect: expect, token: token)
    }

    func json(_ o: [String: Any]) throws -> [UInt8] { Array(try JSONSerialization.data(withJSONObject: o)) }

    func run(code: String, timeLimit: Double?) async throws -> ExecutionResult {
        var body: [String: Any] = ["code": code, "warm": true]
        if let timeLimit { body["time_limit"] = timeLimit }
        return try JSONDecoder().decode(ExecutionResult.self, from: Data(try await call("POST", "/execute", body: try json(body))))
    }

    func sessionCreate(name: String?) async throws -> (id: String, name: String) {
        let answer = try await call("POST", "/sessions", body: try json(name.map { ["name": $0] } ?? [:]), expect: [201])
        let o = (try? JSONSerialization.jsonObject(with: Data(answer)) as? [String: Any]) ?? [:]
        return (o["id"] as? String ?? "", o["name"] as? String ?? "")
    }

    func sessionExecute(_ session: String, code: String, timeLimit: Double?) async throws -> ExecutionResult {
        var body: [String: Any] = ["code": code]
        if let timeLimit { body["time_limit"] = timeLimit }
        let answer = try await call("POST", "/sessions/\(Remote.segment(session))/execute", body: try json(body))
        return try JSONDecoder().decode(ExecutionResult.self, from: Data(answer))
    }

    func sessionUpload(_ session: String, path: String, bytes: [UInt8]) async throws {
        _ = try await call("PUT", Remote.fileURL(session, path), body: bytes, contentType: "application/octet-stream", expect: [201])
    }

    func sessionDownload(_ session: String, path: String) async throws -> [UInt8] {
        try await call("GET", Remote.fileURL(session, path))
    }

    func sessionClose(_ session: String) async throws {
        _ = try await call("DELETE", "/sessions/\(Remote.segment(session))")
    }

    func shutdown() async {}
}

/// The tools on a sandbox of this process (needs root, as `sandpit run` does).
actor LocalBackend: MCPBackend {
    let sandbox: Sandbox
    private var sessions: [String: Session] = [:]

    init() {
        var settings = SandboxSettings()
        settings.spareCgroup = false
        sandbox = Sandbox(settings: settings, logger: Logger(label: "sandpit-mcp"))
        sandbox.sweepStale()
    }

    func find(_ key: String) throws -> Session {
        if let s = sessions[key] ?? sessions.values.first(where: { $0.options.name == key }) { return s }
        throw ToolFailure(description: "no session has the id or name '\(key.prefix(80))'")
    }

    func run(code: String, timeLimit: Double?) async throws -> ExecutionResult {
        var req = ExecutionRequest(code: code)
        if let timeLimit { req.limits.wallSeconds = timeLimit }
        return await sandbox.run(req)
    }

    func sessionCreate(name: String?) async throws -> (id: String, name: String) {
        let id = Sandbox.newID()
        let n = name ?? "session-" + id.prefix(8)
        if sessions.values.contains(where: { $0.options.name == n }) { throw ToolFailure(description: "a session named '\(n)' exists") }
        let s = try await Session.open(sandbox: sandbox, id: id, options: SessionOptions(name: n))
        sessions[id] = s
        return (id, n)
    }

    func sessionExecute(_ session: String, code: String, timeLimit: Double?) async throws -> ExecutionResult {
        try await find(session).execute(code: code, wallSeconds: timeLimit)
    }

    func sessionUpload(_ session: String, path: String, bytes: [UInt8]) async throws {
        try find(session).writeFile(path, bytes)
    }

    func sessionDownload(_ session: String, path: String) async throws -> [UInt8] {
        try find(session).readFile(path, maxBytes: 64 << 20)
    }

    func sessionClose(_ session: String) async throws {
        let s = try find(session)
        sessions[s.id] = nil
        await s.close()
    }

    func shutdown() async {
        for s in sessions.values { await s.close(reason: "the MCP server ended") }
        sessions = [:]
        await sandbox.quiesce()
        sandbox.shutdown()
    }
}

/// `sandpit-mcp` (also `sandpit mcp`): the Model Context Protocol over stdio, with tools
/// that run Python in sandpit's sandbox and return what it printed and what it cost. A
/// binary of its own: the MCP SDK links libcurl (FoundationNetworking), which would add
/// ~6 ms to every start of `sandpit`.
@main
struct SandpitMCP: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandpit-mcp",
        abstract: "Serve the Model Context Protocol on stdin/stdout: run_python and session tools for an assistant.")

    @Option(help: "Use a running `sandpit serve` (unix:PATH or http://HOST:PORT) instead of a sandbox in this process (which needs root).")
    var server: String?

    static let tools: [Tool] = {
        func schema(_ props: [String: Value], required: [String]) -> Value {
            .object(["type": "object", "properties": .object(props), "required": .array(required.map { .string($0) })])
        }
        let code: Value = .object(["type": "string", "description": "Python 3 source"])
        let session: Value = .object(["type": "string", "description": "the session's id or name"])
        let limit: Value = .object(["type": "number", "description": "wall-clock limit in seconds (default 10)"])
        let path: Value = .object(["type": "string", "description": "a path under /work"])
        return [
            Tool(name: "run_python", description: "Run Python code in a fresh sandbox (no network, nothing kept). Returns stdout, stderr and what the run cost (CPU, memory, I/O), measured by the kernel.",
                 inputSchema: schema(["code": code, "time_limit": limit], required: ["code"])),
            Tool(name: "session_create", description: "Make a session: a sandboxed Python interpreter that keeps variables, imports and files between executions. Returns its id.",
                 inputSchema: schema(["name": .object(["type": "string"])], required: [])),
            Tool(name: "session_execute", description: "Run code in a session, like a notebook cell: output, the last expression's value, matplotlib figures as images, and the cell's own metrics.",
                 inputSchema: schema(["session": session, "code": code, "time_limit": limit], required: ["session", "code"])),
            Tool(name: "session_upload", description: "Write a file into a session's /work (text, or base64 with encoding=base64).",
                 inputSchema: schema(["session": session, "path": path, "content": .object(["type": "string"]),
                                      "encoding": .object(["type": "string", "enum": ["text", "base64"]])], required: ["session", "path", "content"])),
            Tool(name: "session_download", description: "Read a file of a session's /work (text when it is UTF-8, else base64).",
                 inputSchema: schema(["session": session, "path": path], required: ["session", "path"])),
            Tool(name: "session_close", description: "End a session; its files go with it.",
                 inputSchema: schema(["session": session], required: ["session"])),
        ]
    }()

    /// A result as tool content: the output, stderr, the metrics line, and images.
    static func content(_ r: ExecutionResult) -> CallTool.Result {
        var text = r.output
        if let e = r.error, !e.isEmpty { text += (text.isEmpty ? "" : "\n") + "[stderr]\n" + e }
        var images: [Tool.Content] = []
        for item in r.richResults.flatMap(JSONValue.init(text:))?.arrayValue ?? [] {
            switch item["type"]?.stringValue {
            case "text/plain"?: text += (text.isEmpty || text.hasSuffix("\n") ? "" : "\n") + "[value] " + (item["data"]?.stringValue ?? "")
            case "image/png"?: images.append(.image(data: item["data"]?.stringValue ?? "", mimeType: "image/png", annotations: nil, _meta: nil))
            default: break
            }
        }
        func f(_ v: Double?) -> String { v.map { String(format: "%.3f", $0) } ?? "null" }
        let metrics = "[sandpit] status \(r.status.rawValue), exit \(r.exitCode.map(String.init) ?? "null"), time \(f(r.executionTime)) s, "
            + "cpu \(f((r.cpuUserTime ?? 0) + (r.cpuSystemTime ?? 0))) s, memory peak \(r.memoryPeak.map(String.init) ?? "null") B, "
            + "block io \(r.blockIORead.map(String.init) ?? "null")/\(r.blockIOWrite.map(String.init) ?? "null") B, tasks \(r.pidsCount.map(String.init) ?? "null")"
        let structured = (try? JSONDecoder().decode(Value.self, from: Data(r.jsonString().utf8)))
        return CallTool.Result(content: [.text(text: text, annotations: nil, _meta: nil), .text(text: metrics, annotations: nil, _meta: nil)] + images,
                               structuredContent: structured, isError: r.status == .internalError)
    }

    static func call(_ p: CallTool.Parameters, _ backend: any MCPBackend) async -> CallTool.Result {
        let a = p.arguments ?? [:]
        func str(_ k: String) throws -> String {
            guard let v = a[k]?.stringValue else { throw ToolFailure(description: "'\(k)' is required (a string)") }
            return v
        }
        let limit = a["time_limit"]?.doubleValue ?? a["time_limit"]?.intValue.map(Double.init)
        do {
            switch p.name {
            case "run_python": return content(try await backend.run(code: try str("code"), timeLimit: limit))
            case "session_create":
                let (id, name) = try await backend.sessionCreate(name: a["name"]?.stringValue)
                return CallTool.Result(content: [.text(text: "session \(id) (name \(name)) is ready", annotations: nil, _meta: nil)],
                                       structuredContent: .object(["id": .string(id), "name": .string(name)]))
            case "session_execute": return content(try await backend.sessionExecute(try str("session"), code: try str("code"), timeLimit: limit))
            case "session_upload":
                let raw = try str("content")
                let bytes: [UInt8]
                if a["encoding"]?.stringValue == "base64" {
                    guard let d = Data(base64Encoded: raw) else { throw ToolFailure(description: "'content' is not valid base64") }
                    bytes = Array(d)
                } else {
                    bytes = Array(raw.utf8)
                }
                try await backend.sessionUpload(try str("session"), path: try str("path"), bytes: bytes)
                return CallTool.Result(content: [.text(text: "wrote \(bytes.count) bytes to /work/\(try str("path"))", annotations: nil, _meta: nil)])
            case "session_download":
                let bytes = try await backend.sessionDownload(try str("session"), path: try str("path"))
                if let text = String(validating: bytes, as: UTF8.self) {
                    return CallTool.Result(content: [.text(text: text, annotations: nil, _meta: nil)])
                }
                return CallTool.Result(content: [.text(text: "base64:" + Data(bytes).base64EncodedString(), annotations: nil, _meta: nil)])
            case "session_close":
                try await backend.sessionClose(try str("session"))
                return CallTool.Result(content: [.text(text: "closed", annotations: nil, _meta: nil)])
            default:
                return CallTool.Result(content: [.text(text: "unknown tool '\(p.name)'", annotations: nil, _meta: nil)], isError: true)
            }
        } catch {
            return CallTool.Result(content: [.text(text: "\(error)", annotations: nil, _meta: nil)], isError: true)
        }
    }

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        let backend: any MCPBackend = server.map { RemoteBackend(server: $0) } ?? LocalBackend()
        let server = Server(name: "sandpit", version: "1.0.0", instructions: "Runs Python in a sandbox and reports what it cost.",
                            capabilities: .init(tools: .init(listChanged: false)))
        await server.withMethodHandler(ListTools.self) { _ in ListTools.Result(tools: Self.tools) }
        await server.withMethodHandler(CallTool.self) { p in await Self.call(p, backend) }
        try await server.start(transport: StdioTransport())
        await server.waitUntilCompleted()
        await backend.shutdown()
    }
}
