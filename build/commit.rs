//! The build script of `kata-gpu` and of the shim (both name this file as `build =`):
//! records the git commit they are built from, for `report`'s `version.txt` and the shim's
//! `-v`: `GIT_COMMIT` when set (a build without `.git`), else `git rev-parse`, else
//! `unknown` (nodes have no git to ask).
//!
//! It reruns only when the commit can have changed: git's HEAD and the current branch's ref,
//! where git says they are (in a worktree `../.git` is a file, not the git directory). A
//! path that does not exist would make cargo rerun it, and relink the binary, on every
//! build (under shims running from it).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KATA_GPU_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../build/commit.rs");
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = [
        Some("HEAD".to_owned()),
        branch,
        Some("packed-refs".to_owned()),
    ];
    for name in watched.into_iter().flatten() {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
