//! The `dockerproxy` binary: command line, configuration, logging and the tokio runtime.
//!
//! ```text
//! dockerproxy [--config PATH]        serve (CONFIG=PATH works too); zero configuration serves
//!                                    the default route table on port 8080; the file's `listen`
//!                                    addresses are added (TLS with `tls_cert` + `tls_key`)
//! dockerproxy healthcheck            GET http://127.0.0.1:$PORT/health, exit 0 on 200, else 1
//! dockerproxy -health-check          the same (go-docker-proxy's flag; --health-check too)
//! dockerproxy --version | --help
//! ```

use std::process::ExitCode;
use std::time::Duration;

use dockerproxy_server::{
    Listener, bind_all_with_backlog, build_state, healthcheck, logging, run_listeners, shutdown,
};

const USAGE: &str =
    "usage: dockerproxy [--config PATH] | healthcheck | --health-check | --version | --help";

enum Command {
    Serve { config_path: Option<String> },
    HealthCheck,
    Version,
    Help,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut config_path = None;
    let mut command = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "healthcheck" | "-health-check" | "--health-check" => {
                command = Some(Command::HealthCheck)
            }
            "--version" | "-version" | "-V" => command = Some(Command::Version),
            "--help" | "-help" | "-h" => command = Some(Command::Help),
            "--config" | "-config" | "-c" => {
                config_path = Some(args.next().ok_or_else(|| format!("{arg} needs a path"))?);
            }
            other => {
                if let Some(path) = other.strip_prefix("--config=") {
                    config_path = Some(path.to_owned());
                } else {
                    return Err(format!("unknown argument {other:?}"));
                }
            }
        }
    }
    Ok(command.unwrap_or(Command::Serve { config_path }))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() -> ExitCode {
    let command = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dockerproxy: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Version => {
            println!("dockerproxy {}", dockerproxy_core::VERSION);
            ExitCode::SUCCESS
        }
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::HealthCheck => health_check(),
        Command::Serve { config_path } => serve(config_path.or_else(|| env("CONFIG"))),
    }
}

fn runtime(multi: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

fn health_check() -> ExitCode {
    let port = env("PORT")
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or(8080);
    let Ok(rt) = runtime(false) else {
        return ExitCode::from(1);
    };
    if rt.block_on(healthcheck::check(port, Duration::from_secs(3))) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn serve(config_path: Option<String>) -> ExitCode {
    let file_text = match &config_path {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("dockerproxy: cannot read configuration file {path}: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let env_source = |name: &str| std::env::var(name).ok();
    // `password_file` credentials: the core never opens files, so the reader is passed in.
    let read_file = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {path:?}: {e}"))
    };
    let loaded = dockerproxy_core::config::load_with(&env_source, file_text.as_deref(), &read_file);
    let (config, warnings) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("dockerproxy: {e}");
            return ExitCode::from(2);
        }
    };
    let options = dockerproxy_server::ServerOptions::from_config(&config);
    logging::init(config.debug, options.json_logs);
    for w in &warnings {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    let port = config.port;
    let backlog = config.limits.listen_backlog;
    let extra: Vec<String> = config.listen.clone();
    let state = match build_state(config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("dockerproxy: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime(true) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dockerproxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        let tls = state.tls_acceptor.is_some();
        let mut listeners: Vec<Listener> = bind_all_with_backlog(port, backlog)
            .await?
            .into_iter()
            .map(|tcp| Listener { tcp, tls: false })
            .collect();
        // Extra `listen` addresses speak TLS when a certificate is configured.
        for addr in &extra {
            let tcp = addr
                .parse::<std::net::SocketAddr>()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                .and_then(|a| dockerproxy_server::listener::bind(a, backlog))
                .map_err(|e| std::io::Error::new(e.kind(), format!("listen {addr}: {e}")))?;
            listeners.push(Listener { tcp, tls });
        }
        tracing::info!(
            version = dockerproxy_core::VERSION,
            port,
            "dockerproxy starting"
        );
        run_listeners(listeners, state, shutdown::signal()).await
    });
    // Connection tasks that outlived the drain are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dockerproxy: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Command, String> {
        parse_args(a.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn cli_forms() {
        assert!(matches!(
            args(&[]),
            Ok(Command::Serve { config_path: None })
        ));
        assert!(matches!(args(&["healthcheck"]), Ok(Command::HealthCheck)));
        assert!(matches!(args(&["-health-check"]), Ok(Command::HealthCheck)));
        assert!(matches!(
            args(&["--health-check"]),
            Ok(Command::HealthCheck)
        ));
        assert!(
            matches!(args(&["--config", "/x.toml"]), Ok(Command::Serve { config_path: Some(p) }) if p == "/x.toml")
        );
        assert!(
            matches!(args(&["--config=/y.toml"]), Ok(Command::Serve { config_path: Some(p) }) if p == "/y.toml")
        );
        assert!(args(&["--config"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
