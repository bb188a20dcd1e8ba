//! Settings from flags and an optional `key = value` config file (flags win).

use std::time::Duration;

use pgorm_events::relay::RelayConfig;

/// The help text.
pub const USAGE: &str = "usage: pgorm-relay [--config FILE] [flags]

flags (config file keys are the same names without `--`, one `key = value` a line,
`#` starts a comment; `rule` may repeat; flags override the file):
  --database-url URL      PostgreSQL (default: $DATABASE_URL)
  --nats-url URL          NATS server (default: $NATS_URL, else nats://127.0.0.1:4222)
  --schema NAME           events schema (default pgorm_events)
  --rule PATTERN          event types to relay: exact, a.*, a.** (repeatable, at least one)
  --stream NAME           JetStream stream (default PGORM_EVENTS, created if missing)
  --prefix SUBJECT        subject prefix (default events): type T goes to PREFIX.T
  --batch N               events per batch (default 1000)
  --takeover-secs S       standby takeover time (default 10)
  --duplicate-window-secs S   duplicate window of a created stream (default 120)
  --keep-completed-secs S keep relayed events in completed_events this long (default: delete)
  --progress-secs S       progress line interval (default 5)";

/// Everything the program needs.
#[derive(Clone, PartialEq)]
pub struct Settings {
    pub database_url: String,
    pub nats_url: String,
    pub schema: String,
    pub rules: Vec<String>,
    pub stream: String,
    pub prefix: String,
    pub batch: usize,
    pub takeover: Duration,
    pub duplicate_window: Duration,
    pub keep_completed: Option<Duration>,
    pub progress: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs can carry passwords: left out.
        f.debug_struct("Settings")
            .field("schema", &self.schema)
            .field("rules", &self.rules)
            .field("stream", &self.stream)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Reads `--config FILE` first (if given), then applies the flags.
    pub fn from_args(args: &[String]) -> Result<Settings, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut flags: Vec<(String, String)> = Vec::new();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => {
                    let value = iter
                        .next()
                        .ok_or_else(|| format!("--{name} needs a value"))?;
                    (name.to_owned(), value.clone())
                }
            };
            if name == "config" {
                let text = std::fs::read_to_string(&value)
                    .map_err(|e| format!("cannot read config file {value:?}: {e}"))?;
                pairs.extend(parse_file(&text)?);
            } else {
                flags.push((name, value));
            }
        }
        let flag_rules = flags.iter().any(|(n, _)| n == "rule");
        if flag_rules {
            pairs.retain(|(n, _)| n != "rule");
        }
        pairs.extend(flags);
        Settings::from_pairs(pairs)
    }

    fn from_pairs(pairs: Vec<(String, String)>) -> Result<Settings, String> {
        let mut settings = Settings {
            database_url: std::env::var("DATABASE_URL").unwrap_or_default(),
            nats_url: std::env::var("NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
            schema: "pgorm_events".to_owned(),
            rules: Vec::new(),
            stream: "PGORM_EVENTS".to_owned(),
            prefix: "events".to_owned(),
            batch: 1000,
            takeover: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(120),
            keep_completed: None,
            progress: Duration::from_secs(5),
        };
        for (name, value) in pairs {
            let secs = |value: &str| -> Result<Duration, String> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("{name}: {value:?} is not a positive number of seconds"))
            };
            match name.as_str() {
                "database-url" => settings.database_url = value,
                "nats-url" => settings.nats_url = value,
                "schema" => settings.schema = value,
                "rule" => settings.rules.push(value),
                "stream" => settings.stream = value,
                "prefix" => settings.prefix = value,
                "batch" => {
                    settings.batch = value
                        .parse()
                        .map_err(|_| format!("batch: {value:?} is not a number"))?
                }
                "takeover-secs" => settings.takeover = secs(&value)?,
                "duplicate-window-secs" => settings.duplicate_window = secs(&value)?,
                "keep-completed-secs" => settings.keep_completed = Some(secs(&value)?),
                "progress-secs" => settings.progress = secs(&value)?,
                other => return Err(format!("unknown setting {other:?}")),
            }
        }
        if settings.database_url.is_empty() {
            return Err("no database: give --database-url or set DATABASE_URL".to_owned());
        }
        if settings.rules.is_empty() {
            return Err("no rule: give at least one --rule".to_owned());
        }
        Ok(settings)
    }

    /// The relay's settings.
    pub fn relay_config(&self) -> RelayConfig {
        let mut config = RelayConfig::new(self.nats_url.clone())
            .stream(self.stream.clone())
            .subject_prefix(self.prefix.clone())
            .batch_size(self.batch)
            .takeover(self.takeover)
            .duplicate_window(self.duplicate_window);
        for rule in &self.rules {
            config = config.rule(rule.clone());
        }
        config
    }
}

/// `key = value` lines; blank lines and `#` comments skipped.
fn parse_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("config line {}: expected `key = value`", number + 1))?;
        let value = value.trim().trim_matches('"');
        pairs.push((key.trim().to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_override_the_config_file() {
        let path =
            std::env::temp_dir().join(format!("pgorm-relay-test-{}.conf", std::process::id()));
        std::fs::write(
            &path,
            "# relay\ndatabase-url = postgres://a@b/c\nrule = order.*\nrule = invoice.**\nstream = FROMFILE\nbatch = 50\n",
        )
        .unwrap();
        let settings = Settings::from_args(&args(&[
            "--config",
            path.to_str().unwrap(),
            "--stream=FROMFLAG",
            "--takeover-secs",
            "3",
        ]))
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(settings.rules, ["order.*", "invoice.**"]);
        assert_eq!(settings.stream, "FROMFLAG");
        assert_eq!(settings.batch, 50);
        assert_eq!(settings.takeover, Duration::from_secs(3));
        assert!(!format!("{settings:?}").contains("postgres://"));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let base = ["--database-url", "postgres://x@y/z"];
        let with = |extra: &[&str]| {
            let mut all = args(&base);
            all.extend(args(extra));
            Settings::from_args(&all)
        };
        assert!(with(&[]).unwrap_err().contains("rule"));
        assert!(with(&["--rule", "a.*", "--batch", "many"])
            .unwrap_err()
            .contains("batch"));
        assert!(with(&["--rule", "a.*", "--wat", "1"])
            .unwrap_err()
            .contains("unknown"));
        assert!(with(&["--rule", "a.*", "--takeover-secs", "-1"]).is_err());
        assert!(with(&["--rule"]).unwrap_err().contains("needs a value"));
    }
}
