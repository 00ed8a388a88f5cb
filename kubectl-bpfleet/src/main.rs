use std::process::ExitCode;

use clap::Parser;
use kubectl_bpfleet::cli::{Cli, Command};
use kubectl_bpfleet::output::Clean;
use kubectl_bpfleet::{Exit, client, image, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        // Image commands talk to a registry only: no kubeconfig needed.
        if let Command::Image(cmd) = cli.command {
            return image::run(*cmd, &mut Clean::new(std::io::stdout().lock())).await;
        }
        let client = client(&cli).await?;
        run(cli, client, &mut Clean::new(std::io::stdout().lock())).await
    }
    .await;
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            // Errors may quote a registry's or the API server's text too.
            eprintln!("error: {}", crds::sanitize::one_line(&format!("{e:#}")));
            ExitCode::from(Exit::Failed as u8)
        }
    }
}
