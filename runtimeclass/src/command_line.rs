//! The one formatter of the `kata-gpu` command lines kata-gpu prints (fixes, next steps,
//! errors): under `--host-root` each gets the root, so that what a user pastes acts on the
//! host they looked at.

use std::path::Path;

/// `text` (a fix, a step's result, an error) as it must be run for the host under `root`:
/// every `kata-gpu` command in it gets `--host-root`, so that pasting it never acts on the
/// real host. Unchanged on a real host (`/`).
pub fn rooted(fix: &str, root: &Path) -> String {
    if root == Path::new("/") {
        return fix.to_owned();
    }
    use clap::CommandFactory;
    // Every subcommand clap knows, so that a command added later is covered too.
    let cli = crate::Cli::command();
    let mut out = String::new();
    let mut rest = fix;
    while let Some(at) = rest.find("kata-gpu ") {
        let (before, from) = rest.split_at(at);
        let after = &from["kata-gpu ".len()..];
        out.push_str(before);
        out.push_str("kata-gpu ");
        let word = after.split_whitespace().next();
        if cli.get_subcommands().any(|c| Some(c.get_name()) == word) {
            out.push_str(&format!("--host-root {} ", root.display()));
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::rooted;
    use std::path::Path;

    #[test]
    fn fixes_under_a_root_name_the_root_and_only_in_kata_gpu_commands() {
        let root = Path::new("/sim");
        assert_eq!(
            rooted("kata-gpu artifacts verify, then reinstall: kata-gpu install --profile snp", root),
            "kata-gpu --host-root /sim artifacts verify, then reinstall: kata-gpu --host-root /sim install --profile snp"
        );
        assert_eq!(
            rooted("restart it: kata-gpu device-plugin", root),
            "restart it: kata-gpu --host-root /sim device-plugin"
        );
        assert_eq!(
            rooted("install the kata-gpu shim as X", root),
            "install the kata-gpu shim as X"
        );
        assert_eq!(rooted("kata-gpu status", Path::new("/")), "kata-gpu status");
    }
}
