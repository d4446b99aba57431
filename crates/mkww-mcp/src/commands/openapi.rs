//! `mkww-mcp openapi`: prints the OpenAPI document that the server serves at `/openapi.json`,
//! so that clients (the TypeScript SDK's generated types) are made without starting a server.

use std::io::Write;

/// Prints the document as pretty JSON on stdout. It needs no configuration: the document
/// depends on the code alone.
pub fn openapi() -> anyhow::Result<()> {
    let json = mcp_api::openapi().to_pretty_json()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{json}")?;
    stdout.flush()?;
    Ok(())
}
