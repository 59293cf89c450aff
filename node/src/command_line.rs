//! The one formatter of the `kata-gpu` command lines kata-gpu prints (fixes, next steps,
//! errors): under `--host-root` each gets the root, so that what a user pastes acts on the
//! host they looked at.

use std::path::Path;

/// `text` (a fix, a step's result, an error) as it must be run for the host under `root`:
/// every `kata-gpu` command in it (a word after `kata-gpu ` that `is_command` knows) gets
/// `--host-root`, so that pasting it never acts on the real host. Unchanged on a real host
/// (`/`). The command line passes its parser's subcommands, so a command added later is
/// covered too.
pub fn rooted(text: &str, root: &Path, is_command: impl Fn(&str) -> bool) -> String {
    if root == Path::new("/") {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("kata-gpu ") {
        let (before, from) = rest.split_at(at);
        let after = &from["kata-gpu ".len()..];
        out.push_str(before);
        out.push_str("kata-gpu ");
        if after.split_whitespace().next().is_some_and(&is_command) {
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
        let known = |w: &str| ["artifacts", "install", "device-plugin", "status"].contains(&w);
        let root = Path::new("/sim");
        let table = [
            (
                "kata-gpu artifacts verify, then reinstall: kata-gpu install --profile snp",
                "kata-gpu --host-root /sim artifacts verify, then reinstall: kata-gpu --host-root /sim install --profile snp",
            ),
            (
                "restart it: kata-gpu device-plugin",
                "restart it: kata-gpu --host-root /sim device-plugin",
            ),
            ("install the kata-gpu shim as X", "install the kata-gpu shim as X"),
            ("kata-gpu", "kata-gpu"),
        ];
        for (text, want) in table {
            assert_eq!(rooted(text, root, known), want);
        }
        assert_eq!(
            rooted("kata-gpu status", Path::new("/"), known),
            "kata-gpu status"
        );
    }
}
