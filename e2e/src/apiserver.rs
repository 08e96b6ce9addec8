//! The API server's own count of the requests it served (`apiserver_request_total` on its
//! `/metrics`), for benchmarks that report what a change cost in API requests.

use std::collections::BTreeMap;

/// Write requests the API server has served since it started, by resource (`apiserver_request_total`).
pub async fn writes(client: &kube::Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut writes = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            Some(&line[start..start + line[start..].find('"')?])
        };
        let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
            continue;
        };
        if !matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE") {
            continue;
        }
        let subresource = label("subresource").unwrap_or_default();
        let key = if subresource.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}/{subresource}")
        };
        let value: f64 = line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0);
        *writes.entry(key).or_default() += value;
    }
    Ok(writes)
}

/// The requests counted in `after` since `before`, leaving out resources with none.
pub fn since(
    before: &BTreeMap<String, f64>,
    after: BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .into_iter()
        .map(|(k, v)| {
            let then = before.get(&k).copied().unwrap_or(0.0);
            (k, v - then)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}
