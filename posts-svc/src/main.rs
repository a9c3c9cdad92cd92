use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    watchword::transport::install_crypto_provider();
    let settings = posts_svc::Settings::from_command_line();
    watchword::telemetry::init();
    watchword::server::run_main("posts-svc", settings.listen, |listener, shutdown| {
        posts_svc::serve(listener, settings, shutdown)
    })
    .await
}
