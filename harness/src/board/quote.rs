//! POSIX shell quoting for argument vectors that must travel as one string.
//!
//! SSH has no argv: the server hands the command string to the remote user's
//! login shell (`$SHELL -c "<string>"`). So every argument is quoted here, and
//! only here, with the one quoting style that has no exceptions in POSIX `sh`:
//! single quotes. Inside `'...'` every byte is literal, newlines included; the
//! only character that cannot appear is `'` itself, written as `'\''` (close
//! the quote, an escaped quote, reopen).
//!
//! Words made only of characters no shell treats specially stay bare, so the
//! commands in logs and error messages read naturally (`cat /sys/devices/...`).
//! `=` is deliberately *not* in that set: a bare `A=b` as the first word would
//! be a variable assignment, not a command; `~` is left out because a leading
//! tilde expands.
//!
//! A NUL byte cannot be part of any Unix argument (argv strings are
//! NUL-terminated), so it cannot be quoted either; transports reject such
//! arguments with [`find_nul`] before building the string.

/// Characters that never need quoting in any position of a POSIX shell word.
fn is_bare_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ',' | ':' | '@' | '%' | '+')
}

/// Quotes one argument so that `sh` reads it back as exactly one word equal to `arg`.
///
/// Empty strings become `''`; strings of safe characters stay bare; everything
/// else is wrapped in single quotes with each `'` written as `'\''`.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(is_bare_safe) {
        return arg.to_string();
    }
    let mut quoted = String::with_capacity(arg.len() + 2);
    quoted.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// Joins an argument vector into one shell command line, each argument quoted.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// The index of the first argument containing a NUL byte, which no shell or
/// `execve` can carry; `None` when the vector is representable.
pub fn find_nul(argv: &[String]) -> Option<usize> {
    argv.iter().position(|a| a.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    /// Runs `printf '%s\0' <joined>` through `/bin/sh` and splits its output on
    /// NUL: the words the shell actually saw.
    fn words_seen_by_sh(argv: &[String]) -> Vec<String> {
        let script = format!("printf '%s\\0' {}", shell_join(argv));
        let out = Command::new("/bin/sh").arg("-c").arg(&script).output().expect("spawn /bin/sh");
        assert!(out.status.success(), "sh failed on {script:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("utf-8 back from printf");
        let mut words: Vec<String> = text.split('\0').map(str::to_string).collect();
        // printf's format ends with \0, so the split leaves one empty tail.
        assert_eq!(words.pop().as_deref(), Some(""), "script {script:?}");
        words
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn safe_words_stay_bare() {
        for w in ["cat", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "-n", "a,b:c@d%e+f", "1.5"] {
            assert_eq!(shell_quote(w), w);
        }
    }

    #[test]
    fn special_words_are_single_quoted() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("'"), "''\\'''");
        assert_eq!(shell_quote("A=b"), "'A=b'");
        assert_eq!(shell_quote("~root"), "'~root'");
        assert_eq!(shell_quote("line1\nline2"), "'line1\nline2'");
        assert_eq!(shell_quote("héllo"), "'héllo'");
    }

    #[test]
    fn join_separates_with_single_spaces() {
        assert_eq!(shell_join(&v(&["echo", "a b", "c"])), "echo 'a b' c");
        assert_eq!(shell_join(&[]), "");
    }

    #[test]
    fn find_nul_points_at_the_offending_argument() {
        assert_eq!(find_nul(&v(&["a", "b"])), None);
        assert_eq!(find_nul(&v(&["a", "b\0c"])), Some(1));
    }

    #[test]
    fn hostile_arguments_round_trip_through_sh() {
        let nasty = v(&[
            "",
            " ",
            "'",
            "''",
            "\"",
            "\\",
            "\\'",
            "$HOME",
            "${IFS}",
            "$(touch /tmp/hil-quote-pwned)",
            "`id`",
            "; rm -rf /",
            "a && b || c",
            "x | y > z < w",
            "*",
            "?",
            "[a-z]",
            "{a,b}",
            "~",
            "~/x",
            "#comment",
            "!event",
            "A=b",
            "-e",
            "--",
            "\n",
            "tab\there",
            "multi\nline\n",
            "\r\n",
            "héllo wörld ✓ 日本",
            "\u{7f}\u{1}\u{1b}[31m",
        ]);
        assert_eq!(words_seen_by_sh(&nasty), nasty);
        assert!(!Path::new("/tmp/hil-quote-pwned").exists());
    }

    use std::path::Path;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any vector of NUL-free strings comes back word for word.
        #[test]
        fn arbitrary_argv_round_trips_through_sh(
            argv in proptest::collection::vec("[^\\x00]{0,12}", 1..6)
        ) {
            prop_assert_eq!(words_seen_by_sh(&argv), argv);
        }

        /// Strings drawn mostly from shell metacharacters, where mistakes live.
        #[test]
        fn metacharacter_soup_round_trips_through_sh(
            argv in proptest::collection::vec("[ '\"\\\\$`;&|<>(){}\\[\\]*?~#!=\n\t a-z\u{e9}\u{2713}]{0,16}", 1..6)
        ) {
            prop_assert_eq!(words_seen_by_sh(&argv), argv);
        }

        #[test]
        fn quote_is_one_word(arg in "[^\\x00]{0,24}") {
            prop_assert_eq!(words_seen_by_sh(std::slice::from_ref(&arg)), vec![arg]);
        }
    }
}
