use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = posts_svc::Settings::parse();
    watchword::telemetry::init();
    watchword::server::run_main("posts-svc", settings.listen, |listener, shutdown| {
        posts_svc::serve(listener, settings, shutdown)
    })
    .await
}
