//! Unified diffs, for `--dry-run`.

use std::path::Path;

/// The unified diff from `old` to `new` of the file at `path` (`None`: the file does not
/// exist on that side); empty when nothing changes.
pub fn unified(path: &Path, old: Option<&str>, new: Option<&str>) -> String {
    if old == new {
        return String::new();
    }
    let name = path.display().to_string();
    let a = if old.is_some() {
        format!("a{name}")
    } else {
        "/dev/null".to_owned()
    };
    let b = if new.is_some() {
        format!("b{name}")
    } else {
        "/dev/null".to_owned()
    };
    similar::TextDiff::from_lines(old.unwrap_or(""), new.unwrap_or(""))
        .unified_diff()
        .context_radius(3)
        .header(&a, &b)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_show_what_a_run_would_change() {
        let p = Path::new("/etc/containerd/config.toml");
        assert_eq!(unified(p, Some("a\n"), Some("a\n")), "");
        let d = unified(p, Some("a\nb\n"), Some("a\nc\nb\n"));
        assert!(
            d.starts_with("--- a/etc/containerd/config.toml\n+++ b/etc/containerd/config.toml\n"),
            "{d}"
        );
        assert!(d.contains("\n+c\n"), "{d}");
        let created = unified(p, None, Some("x\n"));
        assert!(
            created.starts_with("--- /dev/null\n+++ b/etc/containerd/config.toml\n"),
            "{created}"
        );
        let removed = unified(p, Some("x\n"), None);
        assert!(
            removed.contains("+++ /dev/null\n") && removed.ends_with("\n-x\n"),
            "{removed}"
        );
    }
}
