//! The ready file: written once the listener is bound, so the bench knows the process is up and
//! which port it got.

use std::path::Path;

use anyhow::Context;
use tokio::net::TcpListener;

pub fn write(path: Option<&Path>, listener: &TcpListener) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let body = serde_json::json!({ "pid": std::process::id(), "listen": addr.to_string() });
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string())
        .with_context(|| format!("writing ready file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
