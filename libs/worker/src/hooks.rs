//! Pre- and post-hook commands: run with `sh -c` on the worker's host, output captured.

use std::time::Duration;

use tokio::process::Command;

/// The most of a hook's output kept for an error message.
const OUTPUT_KEPT: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{which} hook `{command}` could not start: {reason}")]
    Spawn { which: &'static str, command: String, reason: String },
    #[error("{which} hook `{command}` failed ({status}): {output}")]
    Failed { which: &'static str, command: String, status: String, output: String },
    #[error("{which} hook `{command}` did not finish within {seconds} s")]
    TimedOut { which: &'static str, command: String, seconds: u64 },
}

/// Runs `command` (`which` is "pre" or "post") and returns its output; a non-zero exit is an
/// error that carries the output (the last part, when long).
pub async fn run_hook(which: &'static str, command: &str, timeout: Duration) -> Result<String, HookError> {
    let child =
        Command::new("sh").arg("-c").arg(command).stdin(std::process::Stdio::null()).kill_on_drop(true).output();
    let output = match tokio::time::timeout(timeout, child).await {
        Err(_) => {
            return Err(HookError::TimedOut { which, command: command.to_owned(), seconds: timeout.as_secs() });
        }
        Ok(Err(e)) => return Err(HookError::Spawn { which, command: command.to_owned(), reason: e.to_string() }),
        Ok(Ok(output)) => output,
    };
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let text = text.trim();
    let kept = match text.char_indices().rev().nth(OUTPUT_KEPT) {
        Some((cut, _)) => format!("…{}", &text[cut..]),
        None => text.to_owned(),
    };
    if output.status.success() {
        Ok(kept)
    } else {
        Err(HookError::Failed { which, command: command.to_owned(), status: output.status.to_string(), output: kept })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_hook_reports_its_output() {
        let error = run_hook("pre", "echo quiescing; echo 'db busy' >&2; exit 3", Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("pre hook"), "{error}");
        assert!(error.contains("db busy") && error.contains("quiescing"), "{error}");
        assert!(error.contains("exit status: 3"), "{error}");
    }

    #[tokio::test]
    async fn a_hook_that_hangs_is_stopped() {
        let error = run_hook("post", "sleep 10", Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(error, HookError::TimedOut { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_passing_hook_returns_its_output() {
        assert_eq!(run_hook("post", "echo done", Duration::from_secs(5)).await.unwrap(), "done");
    }
}
