use std::process::ExitCode;

use watchword::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    watchword::transport::install_crypto_provider();
    let settings = auth_svc::Settings::from_command_line();
    let options =
        telemetry::Options::from_env(settings.log_format, settings.otlp_endpoint.clone(), "auth-svc");
    // Kept to the end of `main`: dropping it flushes the spans not yet exported.
    let _telemetry = match telemetry::init_with(&options) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("auth-svc: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(username) = settings.bootstrap_admin.clone() {
        return bootstrap_admin(&settings, &username).await;
    }
    watchword::server::run_main("auth-svc", settings.listen, |listener, shutdown| {
        auth_svc::serve(listener, settings, shutdown)
    })
    .await
}

/// `--bootstrap-admin USERNAME`: the password comes from the environment or stdin, never from a flag.
async fn bootstrap_admin(settings: &auth_svc::Settings, username: &str) -> ExitCode {
    let password = match std::env::var("AUTH_SVC_BOOTSTRAP_PASSWORD") {
        Ok(password) => password,
        Err(_) => {
            let mut line = String::new();
            if let Err(error) = std::io::stdin().read_line(&mut line) {
                tracing::error!(%error, "cannot read the admin password from stdin");
                return ExitCode::FAILURE;
            }
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    match auth_svc::bootstrap_admin(settings, username, password).await {
        Ok(outcome) => {
            println!("{outcome}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "bootstrap failed");
            ExitCode::FAILURE
        }
    }
}
