//! A keyboard-interactive SSH client for tests and benchmarks: OpenSSH's `ssh` with
//! `SSH_ASKPASS` + `SSH_ASKPASS_REQUIRE=force` under `setsid -w` (no tty), so every
//! keyboard-interactive prompt goes to an askpass script, which logs the prompt and answers
//! from a file, one answer per prompt in order (none left: an empty line).

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::netns::Netns;
use crate::oslogin::OsLoginVm;

/// A keyboard-interactive client: answers are read from `answers` (one per line, in order),
/// prompts are appended to `prompts`.
pub struct Client {
    askpass: PathBuf,
    answers: PathBuf,
    prompts: PathBuf,
}

impl Client {
    pub fn new(dir: &Path) -> Client {
        let askpass = dir.join("askpass");
        let answers = dir.join("answers");
        let prompts = dir.join("prompts");
        // Each call takes the first remaining answer (none left: an empty line).
        std::fs::write(
            &askpass,
            format!(
                "#!/bin/sh\nprintf '%s\\n---\\n' \"$1\" >> {p}\nhead -n1 {a}\nsed -i 1d {a}\n",
                p = prompts.display(),
                a = answers.display()
            ),
        )
        .expect("askpass");
        std::process::Command::new("chmod")
            .args(["755"])
            .arg(&askpass)
            .status()
            .expect("chmod");
        Client {
            askpass,
            answers,
            prompts,
        }
    }

    /// `ssh USER@vm COMMAND` with `key`, answering keyboard-interactive prompts with
    /// `answers`; returns the output and the prompts shown.
    pub fn login(
        &self,
        vm: &OsLoginVm,
        key: &Path,
        name: &str,
        answers: &[&str],
        command: &str,
    ) -> (Output, String) {
        self.login_in(&vm.env.ns, key, name, answers, command)
    }

    /// [`Client::login`] from the network namespace `ns` (sshd listening on 127.0.0.1 there).
    pub fn login_in(
        &self,
        ns: &Netns,
        key: &Path,
        name: &str,
        answers: &[&str],
        command: &str,
    ) -> (Output, String) {
        std::fs::write(&self.answers, answers.join("\n") + "\n").expect("answers");
        let _ = std::fs::remove_file(&self.prompts);
        let out = ns
            .command(Path::new("setsid"))
            .arg("-w")
            .arg("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=no",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "ConnectTimeout=10", "-o", "NumberOfPasswordPrompts=1"])
            .args([
                "-o",
                "PreferredAuthentications=publickey,keyboard-interactive",
            ])
            .arg("-i")
            .arg(key)
            .arg(format!("{name}@127.0.0.1"))
            .arg(command)
            .env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ssh");
        let prompts = std::fs::read_to_string(&self.prompts).unwrap_or_default();
        (out, prompts)
    }
}
