//! This test process's log lines (relay, connector and token service running in it), to
//! check what they say — and what they never say.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// The buffer every log line of this process goes to from the first call on. `filter` is an
/// `EnvFilter` directive; the first call's applies for the rest of the process.
pub fn captured(filter: &str) -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buffer = buffer.clone();
            move || Capture(buffer.clone())
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_ansi(false)
            .try_init();
        buffer
    })
    .clone()
}

/// Whether the captured lines contain `needle`.
pub fn contain(logs: &Arc<Mutex<Vec<u8>>>, needle: &str) -> bool {
    logs.lock()
        .map(|b| String::from_utf8_lossy(&b).contains(needle))
        .unwrap_or(false)
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
