//! The shared libraries a binary loads, as the dynamic loader resolves them (`ldd`), so
//! that the image carries exactly those and no distribution around them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The absolute paths of the libraries `binary` loads, the dynamic loader included; empty
/// for a static binary. The vDSO (no file) is left out.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let fail = |detail: String| Error::Ldd {
        binary: binary.to_path_buf(),
        detail,
    };
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| fail(format!("cannot run ldd (Debian's libc-bin): {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd says "not a dynamic executable" (exit 1) for a static binary.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(fail(format!("{}{}", text.trim(), err.trim())));
    }
    parse(&text).map_err(fail)
}

/// Parses ldd's lines: `name => /path (0x…)`, `/path (0x…)` (the loader), `name (0x…)`
/// (the vDSO); `name => not found` is an error naming the library.
fn parse(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if !path.starts_with("linux-vdso") && !path.starts_with("statically") {
            return Err(format!("unexpected line {line:?}"));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libraries_and_the_loader_and_skips_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse(text).expect("parse"),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_missing_library_is_named() {
        let err = parse("\tlibfoo.so.1 => not found\n").expect_err("missing");
        assert_eq!(err, "libfoo.so.1 not found");
    }

    #[test]
    fn a_static_binary_loads_nothing() {
        let busybox = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("busybox"))
            .find(|p| p.is_file())
            .expect("busybox-static on PATH (make deps)");
        assert_eq!(
            shared_libraries(&busybox).expect("ldd"),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn a_dynamic_binary_loads_libc_and_the_loader() {
        let libs = shared_libraries(Path::new("/bin/true")).expect("ldd");
        assert!(libs.iter().any(|l| l.ends_with("libc.so.6")), "{libs:?}");
        assert!(libs.iter().any(|l| l.starts_with("/lib64")), "{libs:?}");
    }
}
