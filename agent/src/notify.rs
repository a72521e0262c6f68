//! Talking to systemd through `NOTIFY_SOCKET` (a no-op when it is not set).

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The interval at which to send WATCHDOG=1 (half of `WATCHDOG_USEC`), when systemd asked.
/// As sd_watchdog_enabled(3): `WATCHDOG_PID`, when set, must be this process (the sd-notify
/// crate also requires it to be set, which systemd does but other supervisors may not).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}
