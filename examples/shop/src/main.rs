//! `braid-shop`: the demo shop's services in one binary, and the HTTP application of Braid's
//! cluster tests. It knows nothing of the mesh: every Braid feature it shows comes from the
//! sidecar, not from this code.
//!
//! ```text
//! braid-shop serve [--listen ADDR] [--role ROLE] [--version V] [--files DIR]
//! braid-shop get URL
//! braid-shop orders --url URL [--count N | --duration SECONDS] [--concurrency C]
//! ```

mod args;
mod client;
mod orders;
mod server;

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = match args::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("braid-shop: {message}\n\n{}", args::USAGE);
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("braid-shop: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            args::Command::Serve(settings) => server::run(settings).await,
            args::Command::Get { url } => client::get_and_print(&url).await,
            args::Command::Orders(settings) => orders::run(settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("braid-shop: {error:#}");
            ExitCode::FAILURE
        }
    }
}
