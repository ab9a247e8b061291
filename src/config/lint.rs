//! Warnings that read the files' text: environment variables that are not
//! set, and credentials written literally where an `${VAR}` belongs.

use std::path::Path;

use super::{Diagnostics, Env, SourceFile};

/// Header names and URL parts that carry credentials.
const SECRET_KEYS: [&str; 7] = ["authorization", "token", "secret", "password", "api-key", "apikey", "sasl.password"];

/// Lints the given files. `offline` skips the environment checks (CI
/// validating files for another machine).
pub fn lint(files: &[&Path], env: &Env, offline: bool) -> Diagnostics {
    let mut out = Diagnostics::default();
    for path in files {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let src = SourceFile::new(path, text.clone());
        let mut pos = 0;
        while let Some(i) = text[pos..].find("${") {
            let at = pos + i;
            pos = at + 2;
            if at > 0 && text.as_bytes()[at - 1] == b'$' {
                continue;
            }
            let Some(end) = text[at..].find('}') else { break };
            let inner = &text[at + 2..at + end];
            if inner.starts_with("file:") {
                continue;
            }
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !offline && env.get(name).is_none() && default.is_some() {
                out.push(src.warning(Some(at..at + end), format!("environment variable {name} is not set; using the default {:?}", default.unwrap_or_default())));
            }
        }
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') {
                continue;
            }
            let lower = line.to_ascii_lowercase();
            for key in SECRET_KEYS {
                let Some(k) = lower.find(key) else { continue };
                if lower[..k].contains("idempotency") {
                    continue;
                }
                let Some(eq) = lower[k..].find('=').map(|e| k + e) else { continue };
                let value: String = lower[eq + 1..].chars().take_while(|c| *c != ',' && *c != '}').collect();
                let value = value.trim().trim_matches('"').trim_matches('\'');
                if !value.is_empty() && !value.contains("${") {
                    let start = src_offset(&text, n) + k;
                    out.push(src.warning(Some(start..start + 1), "a credential is written literally; take it from the environment with ${VAR}"));
                    break;
                }
            }
            // user:password@ in a URL outside ${VAR:-...}
            if let Some(scheme) = line.find("://") {
                let after = &line[scheme + 3..];
                if let Some(at) = after.find('@') {
                    let userinfo = &after[..at];
                    if userinfo.contains(':') && !line[..scheme].contains("${") {
                        let start = src_offset(&text, n) + scheme;
                        out.push(src.warning(Some(start..start + 1), "a URL carries a password literally; take the URL from the environment with ${VAR}"));
                    }
                }
            }
        }
    }
    out
}

fn src_offset(text: &str, line: usize) -> usize {
    text.split_inclusive('\n').take(line).map(str::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_about_unset_variables_and_literal_secrets() {
        let dir = std::env::temp_dir().join(format!("vedgate-lint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("r.toml");
        std::fs::write(&f, "url = \"${SET:-a}\"\nother = \"${UNSET:-http://x}\"\nheaders = { \"Authorization\" = \"Bearer abc\" }\nok = { \"Authorization\" = \"${TOKEN}\" }\ndb = \"postgres://u:p@h/db\"\n").unwrap();
        let env = Env::from_pairs([("SET", "1"), ("TOKEN", "t")]);
        let d = lint(&[f.as_path()], &env, false);
        let text = d.to_string();
        assert!(text.contains("r.toml:2:"), "{text}");
        assert!(text.contains("UNSET is not set"), "{text}");
        assert!(text.contains("r.toml:3:14: warning: a credential is written literally"), "{text}");
        assert!(text.contains("r.toml:5:"), "{text}");
        assert_eq!(d.0.len(), 3, "{text}");
        assert_eq!(lint(&[f.as_path()], &env, true).0.len(), 2, "offline skips the environment");
    }
}
