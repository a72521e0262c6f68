//! A real `NOTIFY_SOCKET`: what systemd would read from a Type=notify service.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    received: Vec<(Instant, String)>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        // A restarted agent gets a fresh socket (the previous one's file is stale).
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        NotifySocket {
            socket,
            path,
            received: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            for line in text.lines() {
                self.received.push((Instant::now(), line.to_owned()));
            }
        }
    }

    /// Waits for a message line equal to `line` (e.g. `READY=1`); returns when it arrived.
    pub fn wait_for(&mut self, line: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some((t, _)) = self.received.iter().find(|(_, l)| l == line) {
                return Some(*t);
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Every line received so far.
    pub fn messages(&mut self) -> Vec<String> {
        self.drain();
        self.received.iter().map(|(_, l)| l.clone()).collect()
    }
}
