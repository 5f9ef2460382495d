//! `sightline-core cluster ...`: the cluster as operators see it.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, partitions, the owner of each, lag per partition (IN stream
    /// last sequence − applied sequence) and checkpoint age, read from the
    /// nodes' /metrics (their `sightline_cluster_*` gauges).
    Status {
        /// A node's HTTP address (plain HTTP); the other nodes are found
        /// from it.
        #[arg(long, env = "SIGHTLINE_HTTP", default_value = "http://127.0.0.1:8080")]
        http: String,
    },
}

pub async fn run(cmd: &ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status { http } => {
            print!("{}", crate::cluster::status::status(http).await?);
            Ok(())
        }
    }
}
