use std::process::ExitCode;

use watchword::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    watchword::transport::install_crypto_provider();
    let settings = posts_svc::Settings::from_command_line();
    let options =
        telemetry::Options::from_env(settings.log_format, settings.otlp_endpoint.clone(), "posts-svc");
    // Kept to the end of `main`: dropping it flushes the spans not yet exported.
    let _telemetry = match telemetry::init_with(&options) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("posts-svc: {error}");
            return ExitCode::FAILURE;
        }
    };
    watchword::server::run_main("posts-svc", settings.listen, |listener, shutdown| {
        posts_svc::serve(listener, settings, shutdown)
    })
    .await
}
