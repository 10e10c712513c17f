//! Per-replica output logs of the process runtime, with a size cap.
//!
//! A replica's stdout and stderr go to a FIFO in its directory (`output.fifo`), opened
//! read-write for the child: the child itself then always holds a reader end, so its writes
//! never fail with EPIPE/SIGPIPE while no agent is reading (an agent restart). They block once
//! the pipe buffer (64 KiB on Linux) is full, until the next agent adopts the replica and drains
//! the FIFO again. The agent's pump task copies the FIFO into `output.log`; when the next write
//! would take the file past the cap, the file is renamed to `output.log.1` (replacing the older
//! one) and a new `output.log` begins, so each file stays at or under the cap. The pump ends when
//! every writer (the replica and anything it started) has closed the FIFO.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// Bytes the pump reads at a time.
pub const PUMP_CHUNK_BYTES: usize = 8 * 1024;

/// Creates the FIFO at `path` if it is not already one (replacing any other file there).
pub fn ensure_fifo(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => return Ok(()),
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(std::io::Error::from)
}

/// The FIFO opened read-write: what the child gets as stdout and stderr (never blocks to open).
pub fn open_child_end(fifo: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)
}

/// A log file that rotates to `<name>.1` before it would grow past `cap_bytes`.
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    rotated: PathBuf,
    cap_bytes: u64,
    file: File,
    size_bytes: u64,
}

impl CappedLog {
    pub fn open(path: &Path, cap_bytes: u64) -> std::io::Result<CappedLog> {
        assert!(cap_bytes > 0, "a log cap of 0 bytes can hold nothing");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size_bytes = file.metadata()?.len();
        let mut rotated = path.as_os_str().to_os_string();
        rotated.push(".1");
        Ok(CappedLog {
            path: path.to_owned(),
            rotated: PathBuf::from(rotated),
            cap_bytes,
            file,
            size_bytes,
        })
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            if self.size_bytes >= self.cap_bytes {
                self.rotate()?;
            }
            let room = usize::try_from(self.cap_bytes - self.size_bytes).unwrap_or(usize::MAX);
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.file.write_all(now)?;
            self.size_bytes += now.len() as u64;
            bytes = later;
        }
        debug_assert!(self.size_bytes <= self.cap_bytes);
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, &self.rotated)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size_bytes = 0;
        Ok(())
    }
}

/// Starts copying `fifo` into a [`CappedLog`] at `log`. Ends at end of file (every writer
/// closed) or on an I/O error, which it reports on stderr once.
pub fn spawn_pump(fifo: &Path, log: &Path, cap_bytes: u64) -> std::io::Result<JoinHandle<()>> {
    let mut out = CappedLog::open(log, cap_bytes)?;
    let mut rx = tokio::net::unix::pipe::OpenOptions::new().open_receiver(fifo)?;
    let log = log.to_owned();
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; PUMP_CHUNK_BYTES];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = out.write(&buf[..n]) {
                        tracing::warn!("log {}: {e}; output dropped", log.display());
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("reading output for {}: {e}", log.display());
                    break;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_before_the_cap() {
        let dir = std::env::temp_dir().join(format!("aware-caplog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("output.log");
        let mut log = CappedLog::open(&path, 10).unwrap();
        log.write(b"0123456").unwrap();
        log.write(b"789abcdef").unwrap(); // 16 bytes: 10 then rotate, 6 in the new file
        assert_eq!(
            std::fs::read(dir.join("output.log.1")).unwrap(),
            b"0123456789"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
        log.write(&[b'x'; 25]).unwrap(); // 4 to the cap, rotate, 10, rotate, 10, rotate, 1
        assert_eq!(
            std::fs::read(dir.join("output.log.1")).unwrap(),
            b"xxxxxxxxxx"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        drop(log);
        // Reopening continues from the current size; rotation happens on the write that needs it.
        let mut log = CappedLog::open(&path, 10).unwrap();
        log.write(b"123456789").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x123456789");
        log.write(b"Z").unwrap();
        assert_eq!(
            std::fs::read(dir.join("output.log.1")).unwrap(),
            b"x123456789"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"Z");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
