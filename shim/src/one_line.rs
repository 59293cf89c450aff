//! A downstream's error, as containerd will show it, in one line. Kata's Go shim already
//! answers one line; runtime-rs answers the `Debug` form of its error: the variant's name,
//! the message quoted and escaped, an `anyhow` chain of causes (`Caused by:` and a numbered
//! line each) and a stack backtrace of `<unknown>` frames, two kilobytes that `kubectl
//! describe pod` shows as one unreadable event. The proxy keeps the status code and the
//! words, in order, joined by `: ` as Go's errors are, and drops the backtrace.

/// The one-line form of `message`, or `None` when it is one line already.
pub fn one_line(message: &str) -> Option<String> {
    let unwrapped = unquote_variant(message);
    let text = unwrapped.as_deref().unwrap_or(message);
    if unwrapped.is_none() && !text.contains('\n') {
        return None;
    }
    let text = text.split("\n\nStack backtrace:").next().unwrap_or(text);
    let mut parts: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line == "Caused by:" {
            continue;
        }
        // A cause is numbered ("0: start vm") when there are several, bare when one.
        let line = match line.split_once(": ") {
            Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rest,
            _ => line,
        };
        parts.push(line);
    }
    let joined = parts.join(": ");
    (joined != message).then_some(joined)
}

/// `Variant("escaped text")` (Rust's `Debug` of an error enum holding a string) unwrapped
/// and unescaped; `None` for anything else.
fn unquote_variant(message: &str) -> Option<String> {
    let open = message.find("(\"")?;
    let (name, rest) = message.split_at(open);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let quoted = rest.strip_prefix("(\"")?.strip_suffix("\")")?;
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => {}
            '0' => out.push('\0'),
            c @ ('"' | '\\' | '\'') => out.push(c),
            // \u{…} and anything else: kept as written.
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// What runtime-rs 4.1 answered to a Create on a host without vhost-vsock, as seen
    /// through containerd (backtrace shortened).
    const RUNTIME_RS: &str = "Others(\"failed to handle message start sandbox in task handler\\n\\nCaused by:\\n    0: start vm\\n    1: generate vhost vsock cid failed\\n    2: failed to open /dev/vhost-vsock, try to run modprobe vhost_vsock.\\n    3: No such file or directory (os error 2)\\n\\nStack backtrace:\\n   0: <unknown>\\n  26: start_thread\\n             at ./nptl/pthread_create.c:442:8\")";

    #[test]
    fn errors_become_one_line_with_every_cause_and_no_backtrace() {
        let table: [(&str, Option<&str>); 6] = [
            (
                RUNTIME_RS,
                Some("failed to handle message start sandbox in task handler: start vm: generate vhost vsock cid failed: failed to open /dev/vhost-vsock, try to run modprobe vhost_vsock.: No such file or directory (os error 2)"),
            ),
            // Kata's Go shim: one line already, left alone.
            (
                "/run/kata-gpu/default/x/configuration.toml: host system doesn't support vsock: stat /dev/vhost-vsock: no such file or directory",
                None,
            ),
            // One cause is not numbered.
            (
                "Others(\"create container\\n\\nCaused by:\\n    bad \\\"spec\\\"\")",
                Some("create container: bad \"spec\""),
            ),
            // Lines of a plain multi-line error.
            ("first\nsecond\n", Some("first: second")),
            // Not a variant: a message that merely holds a parenthesis and a quote.
            ("open(\"x\") failed", None),
            ("", None),
        ];
        for (message, want) in table {
            assert_eq!(one_line(message).as_deref(), want, "{message}");
        }
    }
}
