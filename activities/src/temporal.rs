//! Connecting to Temporal. Settings come from explicit values where given and otherwise
//! through the SDK's envconfig (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, profiles), so a
//! deployment configures Rhone the way it configures every other Temporal client.

use std::str::FromStr;

pub use temporalio_client::Client;
use temporalio_client::{
    ClientOptions, Connection, ConnectionOptions, Url, envconfig::LoadClientConfigProfileOptions,
};

#[derive(Debug, thiserror::Error)]
pub enum TemporalError {
    #[error("invalid Temporal address {address:?}: {source}")]
    Address {
        address: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("loading Temporal client config: {0}")]
    Config(Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "cannot connect to Temporal at {address}: {source} (is the server running? `rhone dev` starts one)"
    )]
    Connect {
        address: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where the Temporal frontend is. `None` fields fall back to envconfig, then defaults.
#[derive(Debug, Clone, Default)]
pub struct TemporalConfig {
    /// `host:port` of the frontend, e.g. `127.0.0.1:7233`.
    pub address: Option<String>,
    pub namespace: Option<String>,
}

pub async fn connect(config: &TemporalConfig) -> Result<Client, TemporalError> {
    let (mut conn_opts, mut client_opts) =
        ClientOptions::load_from_config(LoadClientConfigProfileOptions::default())
            .map_err(|e| TemporalError::Config(e.to_string().into()))?;
    if let Some(address) = &config.address {
        let url = if address.contains("://") {
            address.clone()
        } else {
            format!("http://{address}")
        };
        let url = Url::from_str(&url).map_err(|e| TemporalError::Address {
            address: address.clone(),
            source: e.into(),
        })?;
        conn_opts = ConnectionOptions::new(url)
            .identity(conn_opts.identity.clone())
            .build();
    }
    if let Some(ns) = &config.namespace {
        client_opts = ClientOptions::new(ns.clone()).build();
    }
    let address = conn_opts.target.to_string();
    let connection = Connection::connect(conn_opts)
        .await
        .map_err(|e| TemporalError::Connect {
            address: address.clone(),
            source: e.into(),
        })?;
    Client::new(connection, client_opts).map_err(|e| TemporalError::Connect {
        address,
        source: e.into(),
    })
}
