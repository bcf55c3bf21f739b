//! The `sluice` command line (local mode): trigger a savepoint of a running job and list
//! a job's checkpoints and savepoints. Cluster commands (submit, list jobs, cancel) come
//! with the cluster layer.
//!
//! ```text
//! sluice savepoint   --checkpoint-dir DIR --job NAME [--timeout-secs 60]
//! sluice checkpoints --checkpoint-dir DIR --job NAME
//! ```
//!
//! A running job polls its checkpoint folder for a savepoint request about every 100 ms,
//! takes the savepoint, and writes the answer beside the request; `savepoint` waits for it.

use sluice_checkpoint::CheckpointStore;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:\n  sluice savepoint   --checkpoint-dir DIR --job NAME [--timeout-secs 60]\n  \
                     sluice checkpoints --checkpoint-dir DIR --job NAME";

fn flag(args: &[String], name: &str) -> Result<String, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("{name} is required\n{USAGE}"))
}

fn savepoint(store: &CheckpointStore, timeout: Duration) -> Result<String, String> {
    let answer = store.request_savepoint().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&answer) {
            let _ = std::fs::remove_file(&answer);
            return match text.split_once(' ') {
                Some(("ok", path)) => Ok(path.to_string()),
                Some((_, error)) => Err(format!("the job could not take the savepoint: {error}")),
                None => Err(format!("unreadable answer: {text}")),
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("no answer within {timeout:?}: is the job running with checkpoints in this folder, under this name?"))
}

fn list(store: &CheckpointStore) -> Result<String, String> {
    let mut lines = Vec::new();
    for (id, savepoint) in store.all_ids().map_err(|e| e.to_string())? {
        let kind = if savepoint { "savepoint " } else { "checkpoint" };
        let line = match store.manifest(id, savepoint) {
            Ok(m) => format!(
                "{kind} {id:>6}  complete  {:>10} bytes  {:>3} files{}  {}",
                m.states.iter().map(|s| s.bytes).sum::<u64>(),
                m.states.len(),
                if m.finished { "  finished" } else { "" },
                store.path_of(id, savepoint)
            ),
            Err(e) => format!("{kind} {id:>6}  unusable: {e}"),
        };
        lines.push(line);
    }
    if lines.is_empty() {
        lines.push("no checkpoints".into());
    }
    Ok(lines.join("\n"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = (|| {
        let command = args.first().ok_or(USAGE.to_string())?;
        let store = CheckpointStore::open(&flag(&args, "--checkpoint-dir")?, &flag(&args, "--job")?)
            .map_err(|e| e.to_string())?;
        match command.as_str() {
            "savepoint" => {
                let secs = match flag(&args, "--timeout-secs") {
                    Ok(v) => v.parse().map_err(|_| format!("--timeout-secs {v}: expected seconds"))?,
                    Err(_) => 60,
                };
                savepoint(&store, Duration::from_secs(secs))
            }
            "checkpoints" => list(&store),
            other => Err(format!("unknown command '{other}'\n{USAGE}")),
        }
    })();
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}
