//! Finding the PostgreSQL server binaries (`initdb`, `postgres`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The directory holding `initdb` and `postgres`, looked for in this order:
/// the `PG_BIN` environment variable, `pg_config --bindir`, the newest
/// `/usr/lib/postgresql/*/bin`, then every directory on `PATH`.
///
/// # Errors
/// [`Error::NoBinaries`], whose message says how to install them.
pub fn locate() -> Result<PathBuf, Error> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();

    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        return Err(Error::NoBinaries(format!(
            "PG_BIN is set to {}, which holds no initdb and postgres",
            dir.display()
        )));
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .filter(|(_, dir)| has_server(dir))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|dir| has_server(dir)) {
            return Ok(dir);
        }
    }
    Err(Error::NoBinaries(
        "looked in $PG_BIN, `pg_config --bindir`, /usr/lib/postgresql/*/bin and $PATH".into(),
    ))
}
