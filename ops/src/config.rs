//! Layered configuration: flags over `ROOMCAST_*` environment variables over a TOML file over
//! defaults, the same names everywhere. Shared by every roomcast binary.

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
