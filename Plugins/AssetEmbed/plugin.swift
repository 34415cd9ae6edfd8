import PackagePlugin

/// Compiles the repository's `openapi.json` and the dashboard's files (`ui/`) into the
/// Service target (`OpenAPIDocument.json`, `UIAssets.files`), so that each exists once,
/// in the repository, and the binary needs no files at run time.
@main
struct AssetEmbed: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let root = context.package.directoryURL
        let openapi = root.appending(path: "openapi.json")
        // Listed, not discovered: SwiftPM does not evaluate a plugin again when a
        // directory gains a file, so a new file goes here (and the build sees it).
        let ui = ["index.html", "app.js", "app.css", "favicon.svg"].map { root.appending(path: "ui/" + $0) }
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedAssets.swift")
        return [.buildCommand(displayName: "Embedding openapi.json and ui/",
                              executable: try context.tool(named: "EmbedAssets").url,
                              arguments: [output.path(), openapi.path()] + ui.map { $0.path() },
                              inputFiles: [openapi] + ui, outputFiles: [output])]
    }
}
