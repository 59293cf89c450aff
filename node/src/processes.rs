//! The host's processes, as their command lines show them: enough to tell which of a
//! sandbox's processes run (our proxy, Kata's shim, QEMU), read from the host's `/proc`
//! under a root.

use std::fs;
use std::path::Path;

/// A process and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its pid, as the host's `/proc` numbers it.
    pub pid: u32,
    /// Its command line, one argument each.
    pub argv: Vec<String>,
}

impl Process {
    /// The value after `flag` (e.g. `-id`), if the command line has one.
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let at = self.argv.iter().position(|a| a == flag)?;
        self.argv.get(at + 1).map(String::as_str)
    }

    /// The program's file name (argv\[0\] without its directory).
    pub fn program(&self) -> &str {
        self.argv
            .first()
            .map(|p| p.rsplit('/').next().unwrap_or(p))
            .unwrap_or_default()
    }
}

/// Every process of the host whose command line can be read (kernel threads have none;
/// a process that exits meanwhile is left out), in pid order.
pub fn scan(root: &Path) -> Vec<Process> {
    let Ok(entries) =
        kata_gpu_fsutil::resolve_in_root(root, Path::new("/proc")).and_then(fs::read_dir)
    else {
        return Vec::new();
    };
    let mut out: Vec<Process> = entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let raw = fs::read(e.path().join("cmdline")).ok()?;
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!argv.is_empty()).then_some(Process { pid, argv })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_read_from_the_roots_proc() {
        let root = tempfile::tempdir().expect("tempdir");
        let put = |pid: &str, cmdline: &[u8]| {
            let dir = root.path().join("proc").join(pid);
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join("cmdline"), cmdline).expect("write");
        };
        put(
            "42",
            b"/opt/kata/bin/containerd-shim-kata-v2\0-namespace\0k8s.io\0-id\0abc\0",
        );
        put("7", b"");
        put("self", b"x\0");
        fs::create_dir_all(root.path().join("proc/sys")).expect("mkdir");
        let found = scan(root.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, 42);
        assert_eq!(found[0].program(), "containerd-shim-kata-v2");
        assert_eq!(found[0].flag("-id"), Some("abc"));
        assert_eq!(found[0].flag("-address"), None);
        assert!(scan(&root.path().join("nowhere")).is_empty());
    }
}
