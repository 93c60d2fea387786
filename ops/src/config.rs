//! Layered configuration: flags over `ROOMCAST_*` environment variables over a TOML file over
//! defaults, the same names everywhere. Shared by every roomcast binary, as is the check for
//! `ROOMCAST_*` variables that no option reads ([`unknown_env_vars`]), which each binary warns
//! about at start.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::Parser;
use serde::Serialize;

/// A configuration that cannot run, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The option naming the file itself; it cannot be set inside the file.
const CONFIG_KEY: &str = "config";

/// Loads a clap + serde configuration in layers: flags win over `ROOMCAST_*` environment
/// variables, which win over the TOML file that `config_path` names, which wins over defaults.
/// Unknown keys in the file are errors. Shared by every roomcast binary.
pub fn load_layered<C, I, T>(
    args: I,
    config_path: impl Fn(&C) -> Option<PathBuf>,
) -> Result<C, ConfigError>
where
    C: Parser + Serialize + serde::de::DeserializeOwned,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = C::command().get_matches_from(args);
    let config = C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Some(path) = config_path(&config) else {
        return Ok(config);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let file: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut merged = toml::Table::try_from(&config).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let command = C::command();
    for (key, value) in file {
        let known = command
            .get_arguments()
            .any(|arg| arg.get_id() == key.as_str());
        if key == CONFIG_KEY || !known {
            return Err(ConfigError::Parse {
                path: path.clone(),
                message: format!("unknown option `{key}`"),
            });
        }
        let from_default = matches!(
            matches.value_source(&key),
            None | Some(ValueSource::DefaultValue)
        );
        if from_default {
            merged.insert(key, value);
        }
    }
    let layered: C = merged
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(layered)
}

/// The prefix of every roomcast environment variable.
pub const ENV_PREFIX: &str = "ROOMCAST_";

/// The environment variables the arguments of `command` read (their `env = ...`), sorted.
pub fn declared_env_vars(command: &clap::Command) -> std::collections::BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// The `ROOMCAST_*` names among `names` (environment variable names) that no argument of
/// `command` reads, sorted and without duplicates. [`unknown_env_vars`] applies it to the
/// process's environment.
pub fn unknown_env_vars_in<I, N>(command: &clap::Command, names: I) -> Vec<String>
where
    I: IntoIterator<Item = N>,
    N: AsRef<std::ffi::OsStr>,
{
    let declared = declared_env_vars(command);
    let unknown: std::collections::BTreeSet<String> = names
        .into_iter()
        .map(|name| name.as_ref().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(ENV_PREFIX) && !declared.contains(name))
        .collect();
    unknown.into_iter().collect()
}

/// The `ROOMCAST_*` variables set in this process's environment that no argument of `command`
/// reads: a misspelt or misplaced option the binary would otherwise ignore without a word. Each
/// binary warns about them at start, with its own advice on what to set instead.
pub fn unknown_env_vars(command: &clap::Command) -> Vec<String> {
    unknown_env_vars_in(command, std::env::vars_os().map(|(name, _)| name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn command() -> Command {
        Command::new("t")
            .arg(Arg::new("tick_ms").long("tick-ms").env("ROOMCAST_TICK_MS"))
            .arg(Arg::new("workers").long("workers").env("ROOMCAST_WORKERS"))
            .arg(Arg::new("quiet").long("quiet"))
    }

    #[test]
    fn declared_names_come_from_the_arguments_env() {
        let declared: Vec<String> = declared_env_vars(&command()).into_iter().collect();
        assert_eq!(declared, ["ROOMCAST_TICK_MS", "ROOMCAST_WORKERS"]);
    }

    #[test]
    fn only_undeclared_roomcast_names_are_unknown() {
        let names = [
            "ROOMCAST_TICK_MS",
            "ROOMCAST_TICKS_MS",
            "PATH",
            "RUST_LOG",
            "roomcast_workers",
            "ROOMCAST_QUIET",
            "ROOMCAST_TICKS_MS",
            "ROOMCAST_EDGE_WORKERS",
        ];
        assert_eq!(
            unknown_env_vars_in(&command(), names),
            [
                "ROOMCAST_EDGE_WORKERS",
                "ROOMCAST_QUIET",
                "ROOMCAST_TICKS_MS"
            ]
        );
        assert!(unknown_env_vars_in(&command(), ["ROOMCAST_WORKERS"]).is_empty());
        assert!(unknown_env_vars_in(&command(), Vec::<String>::new()).is_empty());
    }

    #[test]
    fn the_process_environment_is_checked_against_the_command() {
        // Reads the environment only: a variable of the test's own environment that the command
        // does not declare is reported, one it declares is not.
        let mut names: Vec<std::ffi::OsString> =
            std::env::vars_os().map(|(name, _)| name).collect();
        names.sort();
        let expected = unknown_env_vars_in(&command(), &names);
        assert_eq!(unknown_env_vars(&command()), expected);
        for name in &expected {
            assert!(name.starts_with(ENV_PREFIX) && name != "ROOMCAST_TICK_MS");
        }
    }
}
