//! The `.env` file as the lowest configuration layer above the defaults, as the Python service
//! this replaces read it: `KEY=value` lines with the same names as the environment (the legacy
//! names and `AUTOMATION_*`). The process environment and `automation.toml` override it.

use std::path::PathBuf;

use figment::value::{Dict, Map, Value};
use figment::{Error, Figment, Metadata, Profile, Provider};

use super::LEGACY_ENV;

/// The variable that names the file (default: `.env` in the working directory, if there is one).
pub const ENV_FILE_VARIABLE: &str = "AUTOMATION_ENV_FILE";

/// The `.env` layer.
pub struct DotEnv {
    path: PathBuf,
    /// Named by `AUTOMATION_ENV_FILE`: then it must exist.
    required: bool,
}

impl DotEnv {
    /// The file named by `AUTOMATION_ENV_FILE`, else `.env`.
    pub fn from_env() -> DotEnv {
        match std::env::var_os(ENV_FILE_VARIABLE) {
            Some(path) => DotEnv { path: PathBuf::from(path), required: true },
            None => DotEnv { path: PathBuf::from(".env"), required: false },
        }
    }

    fn entries(&self) -> Result<Vec<(String, String)>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !self.required => return Ok(Vec::new()),
            Err(error) => {
                return Err(format!("{ENV_FILE_VARIABLE}: cannot read {}: {error}", self.path.display()));
            }
        };
        text.lines()
            .enumerate()
            .filter_map(|(index, line)| parse_line(line).transpose().map(|entry| (index, entry)))
            .map(|(index, entry)| entry.map_err(|problem| format!("{}:{}: {problem}", self.path.display(), index + 1)))
            .collect()
    }
}

/// One line: `KEY=value`, `export KEY=value`, `KEY="quoted # value"`, `# comment` or blank.
fn parse_line(line: &str) -> Result<Option<(String, String)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = line.strip_prefix("export ").map_or(line, str::trim_start);
    let Some((key, value)) = line.split_once('=') else {
        return Err("expected KEY=value".into());
    };
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{key:?} is not a variable name"));
    }
    let value = value.trim();
    let value = match value.chars().next() {
        Some(quote @ ('"' | '\'')) => {
            let inner = &value[1..];
            let Some(end) = inner.find(quote) else {
                return Err(format!("the value of {key} opens a {quote} quote it does not close"));
            };
            let inner = &inner[..end];
            if quote == '"' { inner.replace("\\n", "\n").replace("\\\"", "\"") } else { inner.to_string() }
        }
        // Unquoted: a ` #` starts a comment.
        _ => value.split(" #").next().unwrap_or_default().trim_end().to_string(),
    };
    Ok(Some((key.to_string(), value)))
}

/// The configuration key a variable sets, as the environment layers read it.
fn key_path(variable: &str) -> Option<String> {
    if let Some((_, path)) = LEGACY_ENV.iter().find(|(name, _)| variable.eq_ignore_ascii_case(name)) {
        return Some((*path).to_string());
    }
    let rest = variable.strip_prefix("AUTOMATION_")?;
    if rest.eq_ignore_ascii_case("CONFIG") || variable == ENV_FILE_VARIABLE {
        return None;
    }
    Some(rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join("."))
}

impl Provider for DotEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("the .env file {}", self.path.display()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut layer = Figment::new();
        for (variable, value) in self.entries().map_err(Error::from)? {
            if let Some(path) = key_path(&variable) {
                let value: Value = value.parse().unwrap_or_else(|never| match never {});
                layer = layer.merge(figment::providers::Serialized::default(&path, value));
            }
        }
        layer.data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_a_shell_would_source_them() {
        let parsed = |line: &str| parse_line(line).expect("parses");
        assert_eq!(parsed("AMQP_URL=amqp://rabbit:5672"), Some(("AMQP_URL".into(), "amqp://rabbit:5672".into())));
        assert_eq!(parsed("export DEBUG=true"), Some(("DEBUG".into(), "true".into())));
        assert_eq!(parsed("JWT_SECRET=\"a # b\"  # note"), Some(("JWT_SECRET".into(), "a # b".into())));
        assert_eq!(parsed("REGION='eu west'"), Some(("REGION".into(), "eu west".into())));
        assert_eq!(parsed("LOG_LEVEL=info # the default"), Some(("LOG_LEVEL".into(), "info".into())));
        assert_eq!(parsed("  # a comment"), None);
        assert_eq!(parsed(""), None);
        assert!(parse_line("no equals sign").is_err());
        assert!(parse_line("BAD-NAME=1").is_err());
        assert!(parse_line("OPEN=\"never closed").is_err());
    }

    #[test]
    fn variables_set_the_keys_the_environment_would() {
        assert_eq!(key_path("DATABASE_URL").as_deref(), Some("database.url"));
        assert_eq!(key_path("AUTOMATION_WORKER__PREFETCH").as_deref(), Some("worker.prefetch"));
        assert_eq!(key_path("AUTOMATION_CONFIG"), None);
        assert_eq!(key_path(ENV_FILE_VARIABLE), None);
        assert_eq!(key_path("PATH"), None, "other variables are the shell's");
    }
}
