//! Writes the JSON Schema of every event, command and the envelope into
//! `schemas/json/` (or the directory given as the first argument).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let files = berth_schemas::generated_schema_files();
    for (rel, text) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    println!("wrote {} schema files to {}", files.len(), dir.display());
    Ok(())
}
