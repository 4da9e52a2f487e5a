//! Running the kernel's configuration tools (`ip`, `nft`, `iptables`,
//! `nsenter`) with typed errors that carry the command line and its stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::NetworkError;

/// Directories searched after `$PATH`: a node agent started by an init
/// system with a minimal `PATH` still finds the sbin tools.
const SBIN_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The full path of `tool`, looked up in `$PATH` then the sbin directories.
pub(crate) fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A tool invocation; `run` returns its stdout or a [`NetworkError::Command`].
pub(crate) struct Tool {
    tool: &'static str,
    args: Vec<String>,
    stdin: Option<String>,
}

impl Tool {
    pub(crate) fn new(tool: &'static str) -> Tool {
        Tool {
            tool,
            args: Vec::new(),
            stdin: None,
        }
    }

    pub(crate) fn arg(mut self, arg: impl Into<String>) -> Tool {
        self.args.push(arg.into());
        self
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Tool
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Feeds `input` on stdin (`nft -f -`, `ip -batch -`).
    pub(crate) fn stdin(mut self, input: impl Into<String>) -> Tool {
        self.stdin = Some(input.into());
        self
    }

    /// The command line as a shell user would type it, for errors and logs.
    pub(crate) fn display(&self) -> String {
        std::iter::once(self.tool.to_string())
            .chain(self.args.iter().map(|a| {
                if a.is_empty() || a.contains(char::is_whitespace) {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            }))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub(crate) fn run(&self) -> Result<String, NetworkError> {
        let program = find_tool(self.tool).ok_or(NetworkError::ToolMissing { tool: self.tool })?;
        let command = self.display();
        tracing::debug!(%command, "running");
        let mut child = Command::new(program)
            .args(&self.args)
            .env("LC_ALL", "C")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetworkError::Io {
                context: format!("starting `{command}`"),
                source,
            })?;
        if let Some(input) = &self.stdin {
            // Dropped at the end of the block: the tool sees end of input.
            let mut pipe = child.stdin.take().expect("stdin was piped");
            pipe.write_all(input.as_bytes())
                .map_err(|source| NetworkError::Io {
                    context: format!("writing the input of `{command}`"),
                    source,
                })?;
        }
        let output = child
            .wait_with_output()
            .map_err(|source| NetworkError::Io {
                context: format!("waiting for `{command}`"),
                source,
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if stderr.is_empty() {
                stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
            }
            Err(NetworkError::Command {
                command,
                status: output.status.to_string(),
                stderr,
                input: self.stdin.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let t = Tool::new("ip")
            .args(["link", "set", "veth1", "up"])
            .arg("a b")
            .arg("");
        assert_eq!(t.display(), "ip link set veth1 up \"a b\" \"\"");
    }

    #[test]
    fn failures_carry_command_and_stderr() {
        let err = Tool::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err();
        match err {
            NetworkError::Command {
                command,
                status,
                stderr,
                input,
            } => {
                assert_eq!(command, "sh -c \"echo oops >&2; exit 3\"");
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "oops");
                assert_eq!(input, None);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn stdin_is_fed_and_stdout_returned() {
        let out = Tool::new("cat").stdin("hello\n").run().unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn a_missing_tool_is_named() {
        let err = Tool::new("rudder-no-such-tool-xyz").run().unwrap_err();
        assert!(matches!(
            err,
            NetworkError::ToolMissing {
                tool: "rudder-no-such-tool-xyz"
            }
        ));
    }
}
