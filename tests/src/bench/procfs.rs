//! What the benchmarks read about the agent from /proc: its process id, memory and CPU time.

use std::time::Duration;

use crate::TestEnv;

/// The agent's process id: the harness starts it through `nsenter`, which execs it (no pid
/// namespace); otherwise its child.
pub fn agent_pid(env: &TestEnv) -> Result<i32, String> {
    let pid = env.agent().pid();
    let is_agent = |p: i32| {
        std::fs::read_link(format!("/proc/{p}/exe"))
            .is_ok_and(|e| e.to_string_lossy().ends_with("guest-agent"))
    };
    if is_agent(pid) {
        return Ok(pid);
    }
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map_err(|e| format!("/proc/{pid}: {e}"))?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|&c| is_agent(c))
        .ok_or_else(|| format!("no guest-agent process under pid {pid}"))
}

/// (VmRSS, VmHWM) in KiB.
pub fn memory(pid: i32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((get("VmRSS:")?, get("VmHWM:")?))
}

/// The process's CPU time so far (user + system, all threads, exited ones included).
pub fn cpu_time(pid: i32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = &stat[stat.rfind(')').ok_or("bad stat")? + 1..];
    // After the ')': state is field 3 of stat(5); utime and stime are fields 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let (Some(u), Some(s)) = (ticks(14), ticks(15)) else {
        return Err(format!("/proc/{pid}/stat: no utime/stime"));
    };
    Ok(Duration::from_nanos(
        (u + s) * 1_000_000_000 / clock_ticks(),
    ))
}

/// Clock ticks per second (utime/stime unit).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf with a constant argument.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// The load average line of /proc/loadavg (1, 5, 15 minutes), and the number of CPUs online.
pub fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let avg: Vec<&str> = avg.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("load average {} on {cpus} CPUs", avg.join(" "))
}
