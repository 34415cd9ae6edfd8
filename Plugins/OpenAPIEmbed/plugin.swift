import PackagePlugin

/// Compiles the repository's `openapi.json` into the Service target as
/// `OpenAPIDocument.json`, so that the document exists once and the binary serves
/// exactly what is in the repository.
@main
struct OpenAPIEmbed: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let input = context.package.directoryURL.appending(path: "openapi.json")
        let output = context.pluginWorkDirectoryURL.appending(path: "OpenAPIDocument.swift")
        return [.buildCommand(displayName: "Embedding openapi.json",
                              executable: try context.tool(named: "EmbedOpenAPI").url,
                              arguments: [input.path(), output.path()],
                              inputFiles: [input], outputFiles: [output])]
    }
}
