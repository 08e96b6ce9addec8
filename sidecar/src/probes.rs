//! The application's HTTP probes. Under STRICT mTLS the kubelet's probe of the application's own
//! port would be refused by the proxy, so the webhook rewrites each `httpGet` probe to the
//! proxy's admin port (`/app-health/<container>/<kind>`) and passes the originals in
//! [`crate::env::APP_PROBES`]; the proxy performs them over loopback.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An application's original HTTP probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppProbe {
    /// Port on loopback.
    pub port: u16,
    /// Path and query.
    pub path: String,
    /// `HTTP` or `HTTPS`.
    pub scheme: String,
}

/// The probes by `<container>/<kind>` (`kind`: `liveness`, `readiness` or `startup`).
pub type AppProbes = BTreeMap<String, AppProbe>;

/// Parses the value of [`crate::env::APP_PROBES`]; the error names the variable.
pub fn parse_app_probes(json: &str) -> Result<AppProbes, String> {
    serde_json::from_str(json).map_err(|e| format!("{}: {e}", crate::env::APP_PROBES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_through_the_variable() {
        let probes = AppProbes::from([(
            "shop/readiness".to_string(),
            AppProbe {
                port: 8080,
                path: "/ready?full=1".into(),
                scheme: "HTTP".into(),
            },
        )]);
        let json = serde_json::to_string(&probes).expect("json");
        assert_eq!(parse_app_probes(&json), Ok(probes));
        let error = parse_app_probes(r#"{"shop/liveness":{"port":70000}}"#).expect_err("refused");
        assert!(error.starts_with("BRAID_APP_PROBES: "), "{error}");
    }
}
