//! A fake systemd notification socket: the test binds it, passes its path as
//! `NOTIFY_SOCKET`, and reads what the service sends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

/// One received notification line (`READY=1`, `STATUS=…`) and when it arrived.
#[derive(Debug, Clone)]
pub struct Notice {
    pub line: String,
    pub at: Instant,
}

/// Collects every datagram sent to its socket, split into lines.
pub struct NotifySocket {
    pub path: PathBuf,
    received: Arc<Mutex<Vec<Notice>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    pub fn bind(dir: &Path, name: &str) -> NotifySocket {
        let path = dir.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let mut sink = sink.lock().unwrap();
                for line in text.lines() {
                    sink.push(Notice {
                        line: line.to_owned(),
                        at,
                    });
                }
            }
        });
        NotifySocket {
            path,
            received,
            task,
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Everything received so far, in order.
    pub fn notices(&self) -> Vec<Notice> {
        self.received.lock().unwrap().clone()
    }

    /// The lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.notices().into_iter().map(|n| n.line).collect()
    }

    /// Waits until a line satisfying `pred` arrived; returns it.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Notice {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self.notices().into_iter().find(|n| pred(&n.line)) {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "notification not received within {timeout:?}; got {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
