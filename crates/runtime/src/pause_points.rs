//! Named points where a job process can be made to stop dead, for the tests that kill a
//! worker at an exact moment of the checkpoint protocol (while a checkpoint's state is
//! being written; after its manifest is written and before its sinks commit). A random
//! SIGKILL lands in those windows too rarely to test them on purpose.
//!
//! Compiled only with the `pause-points` feature (the test jobs turn it on; the `sluice`
//! binary and jobs built without it have no such switch). With it, the environment
//! variable `SLUICE_PAUSE_AT=<point>@<marker file>` makes the first process of any attempt
//! that reaches `<point>` while the marker file does not exist create it (holding the
//! checkpoint id) and then sleep until it is killed. Later attempts find the marker and
//! pass, so a job restarted after the kill runs on.

/// After a checkpoint's barriers are aligned and before its state is written.
pub const BEFORE_UPLOAD: &str = "before-upload";
/// After a checkpoint's manifest is written (it is complete) and before its sinks commit.
pub const BEFORE_COMMIT: &str = "before-commit";

/// Stops this thread for good if `SLUICE_PAUSE_AT` names `point` and its marker does not
/// exist yet; returns at once otherwise (and always without the `pause-points` feature).
pub fn pause_at(point: &str, checkpoint: u64) {
    #[cfg(feature = "pause-points")]
    {
        let Ok(setting) = std::env::var("SLUICE_PAUSE_AT") else { return };
        let Some((name, marker)) = setting.split_once('@') else { return };
        if name != point {
            return;
        }
        // create_new: of two processes reaching the point at once, one pauses.
        let created = std::fs::OpenOptions::new().write(true).create_new(true).open(marker);
        if let Ok(mut file) = created {
            use std::io::Write;
            let _ = writeln!(file, "{checkpoint}");
            let _ = file.sync_all();
            tracing::warn!(checkpoint, "paused at '{point}' (SLUICE_PAUSE_AT) until this process is killed");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
    #[cfg(not(feature = "pause-points"))]
    let _ = (point, checkpoint);
}
