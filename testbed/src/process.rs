//! Running etcd and kube-apiserver as child processes that cannot outlive the test process.
//!
//! Three layers make sure of that:
//!
//! 1. [`ManagedProcess`] kills (SIGKILL) and reaps its child when dropped. It plays the role of
//!    tokio's `kill_on_drop(true)`, but is synchronous: when the drop returns, the process is
//!    gone, which [`TestCluster`](crate::TestCluster)'s drop promises. (tokio's version only
//!    sends the signal and reaps later, from whichever runtime is still alive.)
//! 2. On Linux, each child asks the kernel for SIGKILL when its parent dies
//!    (`prctl(PR_SET_PDEATHSIG)`), which covers a test process that aborts or is killed.
//! 3. PDEATHSIG fires when the *thread* that forked the child exits, not the process. Test
//!    harnesses run each test on a short-lived thread (and `#[tokio::test]` builds a runtime per
//!    test), so children are forked from one dedicated spawner thread that lives as long as the
//!    process. Callers hand it a [`std::process::Command`] and get the child back.
//!
//! Children append stdout and stderr to a log file (a restarted process continues the log of
//! its predecessor); [`log_tail`] reads its end for errors.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;

use crate::Error;

/// How many lines of a log go into an error message.
const TAIL_LINES: usize = 40;
/// How many bytes at the end of a log are read to find those lines.
const TAIL_BYTES: u64 = 32 * 1024;

/// A request to the spawner thread.
struct SpawnRequest {
    command: Command,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Child>>,
}

/// The channel to the spawner thread, started on first use.
fn spawner() -> Result<&'static mpsc::Sender<SpawnRequest>, Error> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("testbed-spawner".into())
                .spawn(move || {
                    // The sender lives in a static, so this loop (and the thread) only ends
                    // when the process does.
                    for mut request in rx {
                        let spawned = request.command.spawn();
                        // The requester may have given up (its future was dropped); then the
                        // child comes back here and is killed by ManagedProcess's drop.
                        if let Err(Ok(child)) = request.reply.send(spawned) {
                            drop(ManagedProcess::adopt(
                                "abandoned child",
                                child,
                                PathBuf::new(),
                            ));
                        }
                    }
                })
                .map(|_| tx)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            Error::io(
                "starting the process-spawner thread",
                std::io::Error::other(e.clone()),
            )
        })
}

/// A child process that is killed and reaped when this value is dropped.
#[derive(Debug)]
pub(crate) struct ManagedProcess {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl ManagedProcess {
    /// Starts `program` with `args`, stdin from /dev/null and stdout + stderr appended to `log`
    /// (created if missing). `name` ("etcd", "kube-apiserver") is used in errors.
    pub(crate) async fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<ManagedProcess, Error> {
        let step = || format!("starting {name} ({})", program.display());
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating the handle of {}", log.display()), e))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        set_parent_death_signal(&mut command);

        let (reply, response) = tokio::sync::oneshot::channel();
        spawner()?
            .send(SpawnRequest { command, reply })
            .map_err(|_| Error::io(step(), std::io::Error::other("the spawner thread is gone")))?;
        let child = response
            .await
            .map_err(|_| Error::io(step(), std::io::Error::other("the spawner thread is gone")))?
            .map_err(|e| Error::io(step(), e))?;
        Ok(ManagedProcess::adopt(name, child, log.to_path_buf()))
    }

    fn adopt(name: &'static str, child: Child, log: PathBuf) -> ManagedProcess {
        ManagedProcess {
            name,
            child: Some(child),
            log,
        }
    }

    /// The process id, or 0 once the process has been stopped.
    pub(crate) fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The log file the process writes to.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Returns an [`Error::ProcessExited`] if the process has exited; `step` says what start-up
    /// was waiting for.
    pub(crate) fn check_running(&mut self, step: &str) -> Result<(), Error> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let status = child
            .try_wait()
            .map_err(|e| Error::io(format!("checking whether {} is running", self.name), e))?;
        match status {
            None => Ok(()),
            Some(status) => Err(Error::ProcessExited {
                process: self.name,
                step: step.to_string(),
                status: status.to_string(),
                log: self.log.clone(),
                tail: log_tail(&self.log),
            }),
        }
    }

    /// Kills the process with SIGKILL (if it still runs) and waits for it. Idempotent.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // kill() fails only if the process was already reaped, which wait() then reports.
            let _ = child.kill();
            if let Err(e) = child.wait() {
                eprintln!(
                    "testbed: waiting for {} (pid {}): {e}",
                    self.name,
                    child.id()
                );
            }
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes the child receive SIGKILL when the thread that forked it exits (see the module docs).
#[cfg(target_os = "linux")]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec. It only makes the
    // async-signal-safe syscalls prctl and getppid and builds io::Errors from raw OS codes,
    // which does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then no signal would come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere only the drop of [`ManagedProcess`] stops the children.
#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_command: &mut Command) {}

/// The last lines of a log file, or a note saying why it could not be read.
pub(crate) fn log_tail(path: &Path) -> String {
    match read_tail(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

fn read_tail(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // Drop the partial first line.
        if let Some(newline) = text.find('\n') {
            text.drain(..=newline);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn drop_kills_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let process =
            ManagedProcess::spawn("sleep", Path::new("/bin/sleep"), &["600".into()], &log)
                .await
                .unwrap();
        let pid = process.id();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(process);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[tokio::test]
    async fn exit_is_reported_with_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let script = "echo first; echo bind: address already in use >&2; exit 3".to_string();
        let mut process =
            ManagedProcess::spawn("sh", Path::new("/bin/sh"), &["-c".into(), script], &log)
                .await
                .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match process.check_running("testing") {
                Ok(()) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Ok(()) => panic!("sh did not exit"),
                Err(e) => break e,
            }
        };
        let text = err.to_string();
        assert!(text.contains("sh exited while testing"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(
            text.contains("first\nbind: address already in use"),
            "{text}"
        );
        assert!(err.is_port_conflict());
    }

    #[tokio::test]
    async fn a_second_run_appends_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("echo.log");
        for word in ["first", "second"] {
            let mut process =
                ManagedProcess::spawn("echo", Path::new("/bin/echo"), &[word.into()], &log)
                    .await
                    .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while process.check_running("testing").is_ok() {
                assert!(Instant::now() < deadline, "echo did not exit");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "first\nsecond\n");
    }

    #[test]
    fn tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("big.log");
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log);
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.ends_with("line 9999"));
        assert!(log_tail(&dir.path().join("missing")).starts_with("(could not read"));
    }
}
