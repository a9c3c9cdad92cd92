use std::process::ExitCode;

use clap::Parser as _;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = auth_svc::Settings::parse();
    watchword::telemetry::init();
    let listener = match TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(addr = %settings.listen, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match auth_svc::serve(listener, settings, watchword::server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "auth-svc failed");
            ExitCode::FAILURE
        }
    }
}
