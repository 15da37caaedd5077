//! Resident memory of a process, read from `/proc` (Linux): what a benchmark's phases cost the service in memory.
//!
//! `/proc/PID/status` gives `VmRSS` (resident now) and `VmHWM` (the peak resident size, the "high water mark").
//! Writing `5` to `/proc/PID/clear_refs` (Linux 4.0 and later; the process's owner or root) sets the peak back to
//! the current size, so each phase's peak is its own.

use anyhow::{Context, bail};

/// Resident sizes of one process at one moment, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resident {
    /// `VmRSS`: resident now.
    pub(crate) now: u64,
    /// `VmHWM`: the peak since the process started or since [`reset_peak`].
    pub(crate) peak: u64,
}

/// Reads the resident sizes of process `pid`.
pub(crate) fn resident(pid: u32) -> anyhow::Result<Resident> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    parse_status(&text)
}

/// Sets the peak (`VmHWM`) of process `pid` back to its current resident size.
pub(crate) fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("cannot reset the peak resident size of process {pid} (needs root or its owner)"))
}

/// Reads `VmRSS` and `VmHWM` (in kB in the file) from a `/proc/PID/status` text.
fn parse_status(text: &str) -> anyhow::Result<Resident> {
    let field = |name: &str| -> anyhow::Result<u64> {
        let Some(line) = text.lines().find_map(|l| l.strip_prefix(name)) else { bail!("no {name} in status") };
        let kb: u64 = line
            .trim_start_matches(':')
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{name}: {line:?}"))?;
        Ok(kb * 1024)
    };
    Ok(Resident { now: field("VmRSS")?, peak: field("VmHWM")? })
}

/// Bytes as megabytes (10^6, as `ps` and the issue count them), for reports.
pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn status_sizes_are_read_in_bytes() {
        let text = "Name:\tzerotouch\nVmPeak:\t  900000 kB\nVmHWM:\t  163000 kB\nVmRSS:\t   98304 kB\nThreads:\t9\n";
        assert_eq!(parse_status(text).unwrap(), Resident { now: 98_304 * 1024, peak: 163_000 * 1024 });
        assert!(parse_status("Name:\tx\nVmRSS:\t 1 kB\n").is_err());
    }
}
