//! Host-key policy as plain data: what to do with the key a server presented.
//!
//! The matching itself is libssh2's (`KnownHosts::check_port`, which
//! understands hashed `|1|` entries and `[host]:port` patterns); this module
//! holds the decisions around it, so they are testable without a server:
//! the verdict per policy, the known_hosts line to append under `accept-new`,
//! the OpenSSH-style fingerprint and the exact `ssh-keyscan` command to show
//! a user whose board is not yet known.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::super::quote::shell_quote;

/// How a server's host key is checked against known_hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostKeyChecking {
    /// The host must be in known_hosts with this key (OpenSSH's `StrictHostKeyChecking yes`).
    #[default]
    Strict,
    /// Unknown hosts are added to known_hosts; a changed key is still refused
    /// (OpenSSH's `accept-new`).
    AcceptNew,
    /// No check at all, with a warning on stderr. Only when the scenario asks.
    Off,
}

/// What libssh2 said about the presented key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnownHostsMatch {
    /// An entry for this host has exactly this key.
    Match,
    /// An entry for this host has a different key: possibly a man in the middle.
    Mismatch,
    /// No entry for this host.
    NotFound,
    /// libssh2 could not perform the check.
    Failure,
}

/// The action to take after the check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyVerdict {
    /// Known and matching: proceed.
    Trusted,
    /// Unknown under `accept-new`: append this line to known_hosts, then proceed.
    Append(String),
    /// Checking is off: proceed, but say so.
    Unverified,
    /// Do not authenticate, do not run anything.
    Refuse(String),
}

/// A server's public host key as sent in the SSH handshake (the wire-format blob).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHostKey {
    /// The key blob: `string algorithm, ...` (RFC 4253 section 6.6).
    pub blob: Vec<u8>,
}

impl ServerHostKey {
    /// The algorithm name embedded at the start of the blob (`ssh-ed25519`, `ssh-rsa`, ...).
    pub fn algorithm(&self) -> Option<&str> {
        let len = u32::from_be_bytes(self.blob.get(..4)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.blob.get(4..4 + len)?).ok()
    }

    /// The fingerprint as OpenSSH prints it: `SHA256:` + unpadded base64 of the blob's digest.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", base64(&Sha256::digest(&self.blob), false))
    }

    /// The `-t` value `ssh-keyscan` takes for this key's algorithm.
    fn keyscan_type(&self) -> &str {
        match self.algorithm() {
            Some("ssh-ed25519") => "ed25519",
            Some("ssh-rsa") => "rsa",
            Some("ssh-dss") => "dsa",
            Some(a) if a.starts_with("ecdsa-sha2-") => "ecdsa",
            _ => "ed25519,ecdsa,rsa",
        }
    }
}

/// The host field of a known_hosts entry: `host` on port 22, `[host]:port` otherwise (as OpenSSH writes it).
pub fn known_hosts_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// One known_hosts line for `key` (without the newline).
pub fn known_hosts_line(host: &str, port: u16, key: &ServerHostKey) -> String {
    let algorithm = key.algorithm().unwrap_or("unknown");
    format!("{} {algorithm} {}", known_hosts_pattern(host, port), base64(&key.blob, true))
}

/// The command a user runs to trust a board, verifying the printed key out of band first.
pub fn keyscan_command(host: &str, port: u16, key: &ServerHostKey, known_hosts: &Path) -> String {
    format!(
        "ssh-keyscan -p {port} -t {} {} >> {}",
        key.keyscan_type(),
        shell_quote(host),
        shell_quote(&known_hosts.to_string_lossy())
    )
}

/// Decides what to do with a checked key under `policy`.
///
/// A mismatch is refused under every policy that checks at all: `accept-new`
/// accepts *new* hosts, never *changed* keys.
pub fn verdict(
    policy: HostKeyChecking,
    found: KnownHostsMatch,
    host: &str,
    port: u16,
    key: &ServerHostKey,
    known_hosts: &Path,
) -> HostKeyVerdict {
    let fingerprint = key.fingerprint();
    let algorithm = key.algorithm().unwrap_or("unknown");
    match (policy, found) {
        (HostKeyChecking::Off, _) => HostKeyVerdict::Unverified,
        (_, KnownHostsMatch::Match) => HostKeyVerdict::Trusted,
        (_, KnownHostsMatch::Mismatch) => HostKeyVerdict::Refuse(format!(
            "host key for {} has CHANGED: the server presented {algorithm} {fingerprint}, which does not match \
             the entry in {}; this can be a man-in-the-middle attack or a reinstalled board. Verify the new key \
             out of band, remove the old entry (ssh-keygen -R {} -f {}), then add the new one ({})",
            known_hosts_pattern(host, port),
            known_hosts.display(),
            shell_quote(&known_hosts_pattern(host, port)),
            shell_quote(&known_hosts.to_string_lossy()),
            keyscan_command(host, port, key, known_hosts),
        )),
        (HostKeyChecking::Strict, KnownHostsMatch::NotFound) => HostKeyVerdict::Refuse(format!(
            "host {} is not in {} (strict host key checking); the server presented {algorithm} {fingerprint}. \
             After verifying that fingerprint, add it with: {} \
             (or set host_key_checking: accept-new for this board)",
            known_hosts_pattern(host, port),
            known_hosts.display(),
            keyscan_command(host, port, key, known_hosts),
        )),
        (HostKeyChecking::AcceptNew, KnownHostsMatch::NotFound) => {
            HostKeyVerdict::Append(known_hosts_line(host, port, key))
        }
        (_, KnownHostsMatch::Failure) => HostKeyVerdict::Refuse(format!(
            "could not check the host key of {} against {} (libssh2 known-hosts check failed)",
            known_hosts_pattern(host, port),
            known_hosts.display()
        )),
    }
}

/// Appends `line` to known_hosts, creating the file (0600) and its directory (0700) when missing.
pub fn append_known_host(known_hosts: &Path, line: &str) -> io::Result<()> {
    if let Some(dir) = known_hosts.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    // A file whose last line lacks its newline would fuse with ours.
    let needs_newline = fs::read(known_hosts).map(|b| !b.is_empty() && !b.ends_with(b"\n")).unwrap_or(false);
    let mut file = fs::OpenOptions::new().create(true).append(true).mode(0o600).open(known_hosts)?;
    let mut text = String::new();
    if needs_newline {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    // One write call with O_APPEND: concurrent boards appending do not interleave lines.
    file.write_all(text.as_bytes())
}

/// The known_hosts entries libssh2 should parse, one per line; comments and blank lines dropped.
pub fn known_hosts_entries(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The 1-based line of a `@revoked` entry for this key, if any. OpenSSH's `sshd(8)`: a key on a
/// `@revoked` line "must not ever be accepted"; this refuses it for every host, under every checking
/// mode (accept-new would otherwise add a revoked key as new, since libssh2 skips the marker).
pub fn revoked_line(text: &str, key: &ServerHostKey) -> Option<usize> {
    let ours = base64(&key.blob, false);
    text.lines().enumerate().find_map(|(i, line)| {
        let mut fields = line.split_whitespace();
        if fields.next() != Some("@revoked") {
            return None;
        }
        // @revoked <patterns> <type> <base64> [comment]
        let blob = fields.nth(2)?;
        (blob.trim_end_matches('=') == ours).then_some(i + 1)
    })
}

/// Standard base64 (RFC 4648 section 4), with or without `=` padding.
pub fn base64(data: &[u8], pad: bool) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = chunk.len() + 1;
        for i in 0..4 {
            if i < symbols {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_key_is_found_whatever_its_host_pattern_and_padding() {
        let key = ServerHostKey { blob: b"\0\0\0\x0bssh-ed25519 some key bytes".to_vec() };
        let padded = base64(&key.blob, true);
        let text = format!("# comment\nboard.example ssh-ed25519 AAAAother\n@revoked * ssh-ed25519 {padded} old key\n");
        assert_eq!(revoked_line(&text, &key), Some(3));
        let unpadded = format!("@revoked [10.0.0.2]:2222 ssh-ed25519 {}\n", base64(&key.blob, false));
        assert_eq!(revoked_line(&unpadded, &key), Some(1));
        // The same key, not revoked; and a revoked other key.
        assert_eq!(revoked_line(&format!("board ssh-ed25519 {padded}\n"), &key), None);
        assert_eq!(revoked_line("@revoked * ssh-ed25519 AAAAC3Nza\n", &key), None);
    }

    fn ed25519_key() -> ServerHostKey {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[7u8; 32]);
        ServerHostKey { blob }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes(), true), expected, "{input:?}");
            assert_eq!(base64(input.as_bytes(), false), expected.trim_end_matches('='), "{input:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff], true), "+/8=");
    }

    #[test]
    fn algorithm_is_read_from_the_blob() {
        assert_eq!(ed25519_key().algorithm(), Some("ssh-ed25519"));
        assert_eq!(ServerHostKey { blob: vec![0, 0, 0, 99, b'x'] }.algorithm(), None);
        assert_eq!(ServerHostKey { blob: vec![0, 0] }.algorithm(), None);
    }

    #[test]
    fn fingerprint_is_unpadded_sha256_base64() {
        let fp = ed25519_key().fingerprint();
        assert!(fp.starts_with("SHA256:"));
        assert_eq!(fp.len(), "SHA256:".len() + 43, "32 bytes -> 43 unpadded symbols: {fp}");
    }

    #[test]
    fn patterns_follow_openssh() {
        assert_eq!(known_hosts_pattern("pi4.lab", 22), "pi4.lab");
        assert_eq!(known_hosts_pattern("127.0.0.1", 2222), "[127.0.0.1]:2222");
        let line = known_hosts_line("127.0.0.1", 2222, &ed25519_key());
        assert!(line.starts_with("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"), "{line}");
    }

    #[test]
    fn keyscan_command_is_quoted() {
        let cmd = keyscan_command("pi 4", 2222, &ed25519_key(), Path::new("/home/me/my hosts"));
        assert_eq!(cmd, "ssh-keyscan -p 2222 -t ed25519 'pi 4' >> '/home/me/my hosts'");
    }

    #[test]
    fn verdicts_per_policy() {
        use HostKeyChecking::*;
        use KnownHostsMatch::*;
        let key = ed25519_key();
        let kh = Path::new("/k");
        let v = |p, m| verdict(p, m, "h", 2200, &key, kh);
        for policy in [Strict, AcceptNew] {
            assert_eq!(v(policy, Match), HostKeyVerdict::Trusted);
            match v(policy, Mismatch) {
                HostKeyVerdict::Refuse(msg) => {
                    assert!(msg.contains("CHANGED") && msg.contains(&key.fingerprint()), "{msg}")
                }
                other => panic!("mismatch under {policy:?} gave {other:?}"),
            }
            assert!(matches!(v(policy, Failure), HostKeyVerdict::Refuse(_)));
        }
        match v(Strict, NotFound) {
            HostKeyVerdict::Refuse(msg) => assert!(msg.contains("ssh-keyscan -p 2200 -t ed25519 h >> /k"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(v(AcceptNew, NotFound), HostKeyVerdict::Append(known_hosts_line("h", 2200, &key)));
        for found in [Match, Mismatch, NotFound, Failure] {
            assert_eq!(v(Off, found), HostKeyVerdict::Unverified);
        }
    }

    #[test]
    fn append_creates_and_repairs_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/known_hosts");
        append_known_host(&path, "a k1").unwrap();
        fs::write(&path, "a k1").unwrap(); // lost its newline
        append_known_host(&path, "b k2").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a k1\nb k2\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn entries_skip_comments_and_blanks() {
        let text = "# comment\n\n  host1 ssh-ed25519 AAAA\n\t\nhost2 ssh-rsa BBBB\n";
        assert_eq!(known_hosts_entries(text).collect::<Vec<_>>(), ["host1 ssh-ed25519 AAAA", "host2 ssh-rsa BBBB"]);
    }
}
