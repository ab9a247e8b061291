//! The environment a config is resolved against, and `${VAR:-default}` expansion.

use std::collections::HashMap;

/// A snapshot of environment variables. Tests build their own instead of
/// touching the process environment, so gateways in one process stay apart.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Env { vars: std::env::vars().collect() }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Env { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(key.into(), value.into());
    }

    /// A variable's value; an empty value counts as unset, as in `${VAR:-default}`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A variable's value even when empty (an empty value can mean "off").
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Expands `${VAR}`, `${VAR:-default}` and `${file:/path}` (the file's
    /// contents, trailing newline removed) in `input`. `$${` is a literal `${`.
    /// Other `$` characters (JSONPaths such as `$.payload`) are left alone.
    pub fn expand(&self, input: &str) -> Result<String, ExpandError> {
        let mut out = String::with_capacity(input.len());
        let mut rest = input;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix("${") {
                let end = tail.find('}').ok_or_else(|| ExpandError::Unclosed(input.to_string()))?;
                let inner = &tail[..end];
                if let Some(path) = inner.strip_prefix("file:") {
                    // A secret mounted as a file (Kubernetes, systemd credentials).
                    let text = std::fs::read_to_string(path).map_err(|e| ExpandError::File(path.to_string(), e.to_string()))?;
                    out.push_str(text.trim_end_matches(['\n', '\r']));
                    rest = &tail[end + 1..];
                    continue;
                }
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(ExpandError::BadName(name.to_string()));
                }
                match (self.get(name), default) {
                    (Some(v), _) => out.push_str(v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => return Err(ExpandError::Unset(name.to_string())),
                }
                rest = &tail[end + 1..];
            } else {
                out.push('$');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Names of the variables `input` references, for the validator.
    pub fn referenced(input: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = input;
        while let Some(pos) = rest.find("${") {
            if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
                rest = &rest[pos + 2..];
                continue;
            }
            let tail = &rest[pos + 2..];
            let Some(end) = tail.find('}') else { break };
            let inner = &tail[..end];
            if !inner.starts_with("file:") {
                names.push(inner.split_once(":-").map(|(n, _)| n).unwrap_or(inner).to_string());
            }
            rest = &tail[end + 1..];
        }
        names
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("environment variable {0} is not set and has no default (write ${{{0}:-default}})")]
    Unset(String),
    #[error("unclosed ${{ in {0:?}")]
    Unclosed(String),
    #[error("bad environment variable name {0:?}")]
    BadName(String),
    #[error("cannot read secret file {0}: {1}")]
    File(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_defaults_and_values() {
        let env = Env::from_pairs([("A", "x"), ("EMPTY", "")]);
        assert_eq!(env.expand("${A:-d}/p").unwrap(), "x/p");
        assert_eq!(env.expand("${B:-http://127.0.0.1:1}/p").unwrap(), "http://127.0.0.1:1/p");
        assert_eq!(env.expand("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(env.expand("$.payload").unwrap(), "$.payload");
        assert_eq!(env.expand("$${A}").unwrap(), "${A}");
        assert_eq!(env.expand("${B}"), Err(ExpandError::Unset("B".into())));
        assert!(env.expand("${A").is_err());
    }

    #[test]
    fn reads_secrets_from_files() {
        let f = std::env::temp_dir().join(format!("vedgate-secret-{}", std::process::id()));
        std::fs::write(&f, "s3cret\n").unwrap();
        let env = Env::default();
        assert_eq!(env.expand(&format!("Bearer ${{file:{}}}", f.display())).unwrap(), "Bearer s3cret");
        assert!(env.expand("${file:/nonexistent/x}").is_err());
    }

    #[test]
    fn lists_referenced_variables() {
        assert_eq!(Env::referenced("${A:-x}/${B}/$${C}"), vec!["A".to_string(), "B".to_string()]);
    }
}
