//! The `braid-webhook` binary.
//!
//! ```text
//! braid-webhook serve                # the admission server (settings from the environment)
//! braid-webhook inject -f FILE|-     # print FILE's pods and pod templates injected
//! ```
//!
//! `serve` reads `BRAID_WEBHOOK_ADDR` (default `0.0.0.0:8443`), `BRAID_WEBHOOK_CERT_DIR` (default
//! `/etc/braid/webhook-tls`, holding `tls.crt` and `tls.key`) and `BRAID_NATIVE_SIDECAR`
//! (`auto`, `true` or `false`; `auto` asks the API server for its version).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use braid_api::{MESH_NAME, Mesh, MeshSpec};
use braid_webhook::inject::InjectSettings;
use braid_webhook::{cli, server, tls};
use futures_util::StreamExt as _;
use kube::runtime::{WatchStreamExt, watcher};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve"] => serve(),
        ["inject", "-f", file] => {
            let mut input = String::new();
            if *file == "-" {
                std::io::stdin().read_to_string(&mut input)?;
            } else {
                input =
                    std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
            }
            let settings = InjectSettings::from_mesh(&MeshSpec::default(), true);
            print!("{}", cli::inject_manifests(&input, &settings)?);
            Ok(())
        }
        _ => {
            eprintln!("usage: braid-webhook serve | braid-webhook inject -f FILE|-");
            std::process::exit(64);
        }
    }
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let addr: SocketAddr = var("BRAID_WEBHOOK_ADDR", "0.0.0.0:8443")
        .parse()
        .context("BRAID_WEBHOOK_ADDR is not host:port")?;
    let cert_dir = PathBuf::from(var("BRAID_WEBHOOK_CERT_DIR", "/etc/braid/webhook-tls"));
    let native = var("BRAID_NATIVE_SIDECAR", "auto");
    if !["auto", "true", "false"].contains(&native.as_str()) {
        bail!("BRAID_NATIVE_SIDECAR={native:?}: expected auto, true or false");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();

    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client")?;
    let native_sidecar = match native.as_str() {
        "true" => true,
        "false" => false,
        _ => {
            let version = client
                .apiserver_version()
                .await
                .context("cannot read the API server's version")?;
            let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(0);
            version.major == "1" && minor >= 29
        }
    };
    tracing::info!(
        native_sidecar,
        "injecting the proxy as a {}",
        if native_sidecar {
            "native sidecar"
        } else {
            "first container"
        }
    );

    let files = tls::CertFiles::in_dir(&cert_dir);
    let cert = tls::ReloadingCert::load(&files)
        .with_context(|| format!("no usable certificate in {}", cert_dir.display()))?;
    tokio::spawn(cert.clone().watch(files));

    let state = server::AppState::new(InjectSettings::from_mesh(
        &MeshSpec::default(),
        native_sidecar,
    ));
    // The Mesh's proxy settings apply to pods admitted after it changes.
    let meshes: kube::Api<Mesh> = kube::Api::all(client);
    let watched = state.clone();
    tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={MESH_NAME}"));
        let mut stream = watcher(meshes, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(mesh) => {
                    *watched.settings.write().unwrap_or_else(|e| e.into_inner()) =
                        InjectSettings::from_mesh(&mesh.spec, native_sidecar);
                    tracing::info!(image = %mesh.spec.proxy.image, "mesh settings updated");
                }
                Err(error) => tracing::warn!(%error, "watching the Mesh failed; retrying"),
            }
        }
    });
    tracing::info!(%addr, "serving admission reviews");
    server::serve(addr, cert.server_config()?, server::router(state)).await?;
    Ok(())
}
