//! Service-account tokens kept fresh for local tools.
//!
//! For each configured account the daemon fetches a token at start (GCE:
//! `instance/service-accounts/ACCOUNT/token`; EC2: `meta-data/iam/security-credentials/ACCOUNT/`
//! with an IMDSv2 session), refreshes it when a third of its lifetime is left (with jitter),
//! retries failures with backoff, and serves the current one until it really expires. Tokens
//! live only in memory: never logged (the [`Secret`] type prints as `<redacted>`), never
//! written to disk, handed out only over the local socket to root and members of
//! `tokens.group`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::mds::{Backoff, ClientSettings, Ec2Client, GceClient, MdsError};

/// A string that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub value: Secret,
    pub token_type: String,
    pub expires_at: Instant,
    pub lifetime: Duration,
}

impl Token {
    /// The token as a tool wants it: `raw`, `json` (GCE's shape) or `header`.
    pub fn format(&self, format: &str) -> Option<String> {
        let remaining = self
            .expires_at
            .saturating_duration_since(Instant::now())
            .as_secs();
        Some(match format {
            "raw" => self.value.expose().to_owned(),
            "header" => format!("Authorization: {} {}", self.token_type, self.value.expose()),
            "json" => serde_json::json!({"access_token": self.value.expose(), "expires_in": remaining, "token_type": self.token_type}).to_string(),
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
struct GceToken {
    access_token: String,
    expires_in: u64,
    #[serde(default = "bearer")]
    token_type: String,
}

fn bearer() -> String {
    "Bearer".into()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ec2Credentials {
    #[serde(default)]
    code: String,
    expiration: String,
    token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Mds(#[from] MdsError),
    #[error("{0}")]
    Bad(String),
}

fn check_token(t: &str) -> Result<(), TokenError> {
    if t.is_empty() || t.len() > 8192 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Bad(
            "the token is empty, too long or not printable".into(),
        ));
    }
    Ok(())
}

/// One fetch in the GCE format.
pub async fn fetch_gce(client: &GceClient, account: &str) -> Result<Token, TokenError> {
    let t: GceToken = client
        .get_json(&format!("instance/service-accounts/{account}/token"))
        .await?;
    check_token(&t.access_token)?;
    let lifetime = Duration::from_secs(t.expires_in.max(1));
    Ok(Token {
        value: Secret(t.access_token),
        token_type: t.token_type,
        expires_at: Instant::now() + lifetime,
        lifetime,
    })
}

/// One fetch in the EC2 format.
pub async fn fetch_ec2(client: &Ec2Client, account: &str) -> Result<Token, TokenError> {
    let c: Ec2Credentials = client
        .get_json(&format!("meta-data/iam/security-credentials/{account}/"))
        .await?;
    if !c.code.is_empty() && c.code != "Success" {
        return Err(TokenError::Bad(format!(
            "credentials answer code {:?}",
            c.code
        )));
    }
    check_token(&c.token)?;
    let expires = crate::accounts::expiry::parse_timestamp(&c.expiration)
        .ok_or_else(|| TokenError::Bad(format!("unreadable Expiration {:?}", c.expiration)))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let lifetime = Duration::from_secs((expires - now).max(1) as u64);
    Ok(Token {
        value: Secret(c.token),
        token_type: "Bearer".into(),
        expires_at: Instant::now() + lifetime,
        lifetime,
    })
}

/// One fetch with the configured flavor (`auto`: GCE, then EC2 when GCE does not serve it).
pub async fn fetch(config: &Config, account: &str) -> Result<Token, TokenError> {
    let settings = ClientSettings::from_config(&config.metadata).map_err(TokenError::Bad)?;
    let ec2 = || {
        let m = &config.metadata;
        Ec2Client::new(
            settings.clone(),
            Duration::from_secs(m.ec2_session_ttl_secs),
            m.ec2_imdsv1_fallback,
        )
    };
    match config.tokens.flavor.as_str() {
        "ec2" => fetch_ec2(&ec2(), account).await,
        "gce" => fetch_gce(&GceClient::new(settings.clone()), account).await,
        _ => match fetch_gce(&GceClient::new(settings.clone()), account).await {
            Ok(t) => Ok(t),
            Err(gce) => fetch_ec2(&ec2(), account).await.map_err(|_| gce),
        },
    }
}

/// The daemon's tokens.
#[derive(Default)]
pub struct TokenKeeper {
    tokens: Mutex<HashMap<String, Token>>,
}

impl TokenKeeper {
    /// The current token of `account`, unless it has expired.
    pub fn get(&self, account: &str) -> Option<Token> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(account)
            .filter(|t| t.expires_at > Instant::now())
            .cloned()
    }

    /// Keeps `account`'s token fresh until dropped.
    pub async fn keep(self: Arc<Self>, config: watch::Receiver<Arc<Config>>, account: String) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut failing = false;
        loop {
            let cfg = config.borrow().clone();
            let wait = match fetch(&cfg, &account).await {
                Ok(token) => {
                    if failing {
                        tracing::info!(%account, "service-account token fetched again");
                    }
                    failing = false;
                    backoff.reset();
                    // Refresh when a third of the lifetime is left, jittered by up to 10%.
                    let third = token.lifetime / 3;
                    let jitter = Duration::from_millis(fastrand::u64(
                        0..=(third.as_millis() as u64 / 10).max(1),
                    ));
                    let wait = token
                        .lifetime
                        .saturating_sub(third)
                        .saturating_sub(jitter)
                        .max(Duration::from_millis(500));
                    tracing::debug!(%account, expires_in = token.lifetime.as_secs(), "service-account token refreshed");
                    self.tokens
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(account.clone(), token);
                    wait
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(%account, error = %e, "cannot fetch the service-account token; serving the current one until it expires, retrying");
                    }
                    failing = true;
                    backoff.next_delay()
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let t = Token {
            value: Secret("ya29.secret".into()),
            token_type: "Bearer".into(),
            expires_at: Instant::now() + Duration::from_secs(100),
            lifetime: Duration::from_secs(100),
        };
        assert!(!format!("{t:?}").contains("ya29"));
        assert_eq!(t.format("raw").unwrap(), "ya29.secret");
        assert_eq!(
            t.format("header").unwrap(),
            "Authorization: Bearer ya29.secret"
        );
        let j: serde_json::Value = serde_json::from_str(&t.format("json").unwrap()).unwrap();
        assert_eq!(j["access_token"], "ya29.secret");
        assert!(j["expires_in"].as_u64().unwrap() <= 100);
        assert!(t.format("xml").is_none());
    }
}
