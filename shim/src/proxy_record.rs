//! The record our proxy leaves beside its socket, and what `delete` learns from it: which
//! downstream to clean up through its own API when the proxy died, and whether it died.

use std::fs;
use std::path::{Path, PathBuf};

use crate::actions::{is_listening, SERVE_ACTION};

/// Beside our socket: the downstream's version and address, so that `delete` can stop
/// the downstream when the proxy itself died.
pub(crate) fn downstream_record(socket: &Path) -> PathBuf {
    socket.with_extension("downstream")
}

/// What the record beside our socket says: `VERSION ADDRESS [SERVER_PID]`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DownstreamRecord {
    pub(crate) version: u32,
    pub(crate) address: String,
    /// Our proxy's pid (records written before it was kept have none).
    pub(crate) proxy_pid: Option<u32>,
}

impl std::fmt::Display for DownstreamRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.version, self.address)?;
        match self.proxy_pid {
            Some(pid) => write!(f, " {pid}"),
            None => Ok(()),
        }
    }
}

impl DownstreamRecord {
    pub(crate) fn parse(text: &str) -> Option<DownstreamRecord> {
        let mut words = text.split_whitespace();
        let version = words.next()?.parse().ok()?;
        let address = words.next()?.to_owned();
        let proxy_pid = match words.next() {
            Some(pid) => Some(pid.parse().ok()?),
            None => None,
        };
        words.next().is_none().then_some(DownstreamRecord {
            version,
            address,
            proxy_pid,
        })
    }

    pub(crate) fn read(socket: &Path) -> Option<DownstreamRecord> {
        DownstreamRecord::parse(&fs::read_to_string(downstream_record(socket)).ok()?)
    }
}

/// Whether the proxy for `group` still runs. Not "is its socket there": the downstream
/// removes the socket named in the bundle's `address` (ours) when it shuts down, while our
/// proxy is still finishing; a live proxy is one whose recorded pid runs our `serve` for
/// that group.
pub(crate) fn proxy_alive(record: Option<&DownstreamRecord>, socket: &Path, group: &str) -> bool {
    match record.and_then(|r| r.proxy_pid) {
        Some(pid) => fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            words
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == group.as_bytes())
                && words.iter().rev().find(|w| !w.is_empty()) == Some(&SERVE_ACTION.as_bytes())
        }),
        None => is_listening(socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn records_print_and_parse_back() {
        let table = [
            ("2 unix:///run/containerd/s/ab 4242", Some((2, Some(4242)))),
            ("3 unix:///run/containerd/s/ab", Some((3, None))),
            ("3 unix:///run/containerd/s/ab\n", Some((3, None))),
            ("", None),
            ("x unix:///a 1", None),
            ("2 unix:///a notapid", None),
            ("2 unix:///a 1 extra", None),
        ];
        for (text, want) in table {
            let got = DownstreamRecord::parse(text);
            assert_eq!(
                got.as_ref().map(|r| (r.version, r.proxy_pid)),
                want,
                "{text:?}"
            );
            if let Some(r) = got {
                assert_eq!(DownstreamRecord::parse(&r.to_string()), Some(r));
            }
        }
    }

    /// A stand-in proxy: `sh -c 'sleep 30' -id GROUP serve` has the cmdline words ours has.
    fn fake_proxy(group: &str) -> std::process::Child {
        let child = Command::new("sh")
            .args(["-c", "sleep 30", "-id", group, SERVE_ACTION])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sh");
        // Until it execs, the child's cmdline is ours.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"sh\0")) {
            assert!(std::time::Instant::now() < deadline, "sh did not start");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child
    }

    #[test]
    fn a_proxy_is_alive_while_its_recorded_process_serves_the_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("s");
        let write = |pid: Option<u32>| {
            let r = DownstreamRecord {
                version: 2,
                address: "unix:///nowhere".to_owned(),
                proxy_pid: pid,
            };
            fs::write(downstream_record(&socket), r.to_string()).expect("record");
        };
        let alive =
            |group: &str| proxy_alive(DownstreamRecord::read(&socket).as_ref(), &socket, group);
        let mut proxy = fake_proxy("pod-1");
        write(Some(proxy.id()));
        assert!(alive("pod-1"), "its socket is gone, the proxy is not");
        assert!(!alive("pod-2"), "another group's proxy");
        proxy.kill().expect("kill");
        proxy.wait().expect("reap");
        assert!(!alive("pod-1"), "killed");
        // Without a pid, only a listening socket counts.
        write(None);
        assert!(!alive("pod-1"));
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        assert!(alive("pod-1"));
        fs::remove_file(downstream_record(&socket)).expect("rm");
        assert!(alive("pod-1"), "no record: the socket decides");
    }
}
