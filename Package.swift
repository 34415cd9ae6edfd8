// swift-tools-version:6.2
import PackageDescription

let package = Package(
    name: "sandpit",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "sandpit", targets: ["Runner"]),
        .executable(name: "sandpit-bench", targets: ["Bench"]),
        .executable(name: "sandpit-mcp", targets: ["MCPServer"]),
        .library(name: "CgroupKit", targets: ["CgroupKit"]),
        .library(name: "Sandbox", targets: ["Sandbox"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.77.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.0.0"..<"5.0.0"),
        .package(url: "https://github.com/modelcontextprotocol/swift-sdk", from: "0.12.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.0"),
    ],
    targets: [
        // The only code that runs between clone and exec, plus thin wrappers for
        // variadic syscalls (ioctl, prctl) that Swift cannot call directly.
        .target(
            name: "CSandpit",
            linkerSettings: [.linkedLibrary("seccomp"), .linkedLibrary("cap")]
        ),
        // A SQLite aggregate for GET /executions/trends (per-bucket percentiles in one pass).
        .target(
            name: "CTrend",
            linkerSettings: [.linkedLibrary("sqlite3")]
        ),
        .target(
            name: "CgroupKit",
            dependencies: ["CSandpit"]
        ),
        .target(
            name: "Sandbox",
            dependencies: [
                "CgroupKit", "CSandpit",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Build tool: openapi.json and the dashboard (ui/) → Swift constants (each exists
        // once, in the repo; the binary needs no files at run time).
        .executableTarget(name: "EmbedAssets", path: "Sources/EmbedAssets"),
        .plugin(name: "AssetEmbed", capability: .buildTool(), dependencies: ["EmbedAssets"]),
        // The HTTP API and the execution log.
        .target(
            name: "Service",
            dependencies: [
                "Sandbox", "CgroupKit", "CTrend",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
            ],
            plugins: ["AssetEmbed"]
        ),
        // `sandpit-mcp`: the MCP server (a binary of its own: the SDK links libcurl).
        .executableTarget(
            name: "MCPServer",
            dependencies: [
                "Sandbox", "Service",
                .product(name: "MCP", package: "swift-sdk"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/MCPServer"
        ),
        .executableTarget(
            name: "Runner",
            dependencies: [
                "Sandbox", "CgroupKit", "Service",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "Bench",
            dependencies: ["Sandbox", .product(name: "Logging", package: "swift-log")],
            path: "Sources/Bench"
        ),
        .testTarget(
            name: "CgroupKitTests",
            dependencies: ["CgroupKit"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "ServiceTests",
            dependencies: [
                "Service", "Sandbox", "CgroupKit",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .testTarget(
            name: "SandboxTests",
            dependencies: ["Sandbox", "CgroupKit"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
