import ArgumentParser
import Foundation
import Sandbox
import Service

/// `sandpit session new|exec|ls|rm|cp`: the sessions API of a running `sandpit serve`.
struct SessionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "session",
        abstract: "Sessions of a running `sandpit serve`: an interpreter that keeps its state between executions.",
        subcommands: [New.self, Exec.self, List.self, Remove.self, Copy.self])

    struct Connection: ParsableArguments {
        @Option(help: "The service: unix:PATH (its --socket) or http://HOST:PORT. SANDPIT_TOKEN is sent as its bearer token.")
        var server = "unix:" + SandboxSettings().stateDirectory + "/sandpit.sock"

        /// The answer, or exit 125 with the service's reason.
        func call(_ method: String, _ path: String, body: [UInt8] = [], contentType: String = "application/json",
                  expect: Set<Int> = [200]) async throws -> [UInt8] {
            do {
                return try await Remote.call(server: server, method: method, path: path, body: body, contentType: contentType,
                                             expect: expect, token: ProcessInfo.processInfo.environment["SANDPIT_TOKEN"])
            } catch let f as Remote.Refused {
                FileHandle.standardError.write(Data("sandpit: \(f.description)\n".utf8))
                throw ExitCode(125)
            }
        }

        func object(_ bytes: [UInt8]) -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]) ?? [:]
        }
    }


    struct New: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a session; prints its id.")
        @OptionGroup var connection: Connection
        @Option(help: "Its name (unique among live sessions; usable instead of the id).") var name: String?
        @Option(name: .customLong("memory-limit"), help: "Memory limit of the whole session, in bytes.") var memoryLimit: UInt64?
        @Option(name: .customLong("time-limit"), help: "Each execution's default wall-clock limit (s).") var timeLimit: Double?
        @Option(name: .customLong("idle-timeout"), help: "End it after this long without a request (s).") var idleTimeout: Double?
        @Option(help: "End it this long after it was made (s).") var ttl: Double?
        @Flag(help: "Print the whole session object (JSON).") var json = false

        func run() async throws {
            var body: [String: Any] = [:]
            if let name { body["name"] = name }
            if let memoryLimit { body["memory_limit"] = memoryLimit }
            if let timeLimit { body["time_limit"] = timeLimit }
            if let idleTimeout { body["idle_timeout"] = idleTimeout }
            if let ttl { body["ttl"] = ttl }
            let answer = try await connection.call("POST", "/sessions", body: Array(try JSONSerialization.data(withJSONObject: body)), expect: [201])
            if json { print(String(decoding: answer, as: UTF8.self)) } else { print(connection.object(answer)["id"] as? String ?? "") }
        }
    }

    struct Exec: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run code in a session: its output, then the final expression's value; exits with its exit code.")
        @OptionGroup var connection: Connection
        @Argument(help: "The session's id or name.") var session: String
        @Argument(help: "Code to run; '-' or nothing reads it from standard input.") var code: String?
        @Option(name: .shortAndLong, help: "Read the code from this file.") var file: String?
        @Option(name: .customLong("time-limit"), help: "Wall-clock limit of this execution (s).") var timeLimit: Double?
        @Option(name: .customLong("save-images"), help: "Write image results (PNG) into this directory.") var saveImages: String?
        @Flag(help: "Print the whole result (JSON).") var json = false

        func run() async throws {
            let program: String
            if let file {
                guard let d = FileManager.default.contents(atPath: file) else { throw ValidationError("cannot read \(file)") }
                program = String(decoding: d, as: UTF8.self)
            } else if let code, code != "-" {
                program = code
            } else {
                program = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            }
            var body: [String: Any] = ["code": program]
            if let timeLimit { body["time_limit"] = timeLimit }
            let answer = try await connection.call("POST", "/sessions/\(Remote.segment(session))/execute",
                                                   body: Array(try JSONSerialization.data(withJSONObject: body)))
            let result = try JSONDecoder().decode(ExecutionResult.self, from: Data(answer))
            if json {
                print(String(decoding: answer, as: UTF8.self))
            } else {
                FileHandle.standardOutput.write(Data(result.output.utf8))
                if let e = result.error { FileHandle.standardError.write(Data(e.utf8)) }
                let items = result.richResults.flatMap(JSONValue.init(text:))?.arrayValue ?? []
                var n = 0
                for item in items {
                    switch item["type"]?.stringValue {
                    case "text/plain"?: print(item["data"]?.stringValue ?? "")
                    case "image/png"?:
                        n += 1
                        guard let dir = saveImages, let data = item["data"]?.stringValue.flatMap({ Data(base64Encoded: $0) }) else {
                            FileHandle.standardError.write(Data("sandpit: an image/png result (--save-images DIR keeps it)\n".utf8))
                            continue
                        }
                        let path = dir + "/\(result.containerName)-\(result.executionIndex ?? 0)-\(n).png"
                        FileManager.default.createFile(atPath: path, contents: data)
                        FileHandle.standardError.write(Data("sandpit: image written to \(path)\n".utf8))
                    default: break
                    }
                }
            }
            if result.status == .internalError { throw ExitCode(125) }
            throw ExitCode(Int32(result.exitCode ?? 1))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "The live sessions.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print the answer as JSON.") var json = false

        func run() async throws {
            let answer = try await connection.call("GET", "/sessions")
            if json { return print(String(decoding: answer, as: UTF8.self)) }
            print(["ID", "NAME", "STATE", "EXECUTIONS", "CREATED"].joined(separator: "\t"))
            for s in connection.object(answer)["sessions"] as? [[String: Any]] ?? [] {
                print([s["id"] as? String ?? "", s["name"] as? String ?? "", s["state"] as? String ?? "",
                       String(s["executions"] as? Int ?? 0), s["created_at"] as? String ?? ""].joined(separator: "\t"))
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "End sessions (their files go with them).")
        @OptionGroup var connection: Connection
        @Argument(help: "Ids or names.") var sessions: [String]

        func run() async throws {
            for s in sessions { _ = try await connection.call("DELETE", "/sessions/\(Remote.segment(s))") }
        }
    }

    struct Copy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cp", abstract: "Copy a file into or out of a session: SESSION:PATH names a file under its /work.")
        @OptionGroup var connection: Connection
        @Argument(help: "A local file, or SESSION:PATH.") var source: String
        @Argument(help: "A local file, or SESSION:PATH.") var destination: String

        static func remote(_ s: String) -> (String, String)? {
            guard let colon = s.firstIndex(of: ":"), colon != s.startIndex else { return nil }
            return (String(s[..<colon]), String(s[s.index(after: colon)...]))
        }

        func run() async throws {
            switch (Self.remote(source), Self.remote(destination)) {
            case (nil, let (session, path)?):
                guard let data = FileManager.default.contents(atPath: source) else { throw ValidationError("cannot read \(source)") }
                _ = try await connection.call("PUT", Remote.fileURL(session, path), body: Array(data), contentType: "application/octet-stream", expect: [201])
            case (let (session, path)?, nil):
                let bytes = try await connection.call("GET", Remote.fileURL(session, path))
                guard FileManager.default.createFile(atPath: destination, contents: Data(bytes)) else {
                    throw ValidationError("cannot write \(destination)")
                }
            default:
                throw ValidationError("exactly one of SOURCE and DESTINATION must be SESSION:PATH")
            }
        }
    }
}
