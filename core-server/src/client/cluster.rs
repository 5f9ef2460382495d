//! `sightline-core cluster ...`: the cluster as operators see it.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, partitions, the owner of each, lag per partition (IN stream
    /// last sequence − applied sequence) and checkpoint age, read from the
    /// nodes' /metrics (their `sightline_cluster_*` gauges).
    Status {
        /// A node's HTTP address (`http://` or, for nodes that serve TLS,
        /// `https://` trusting the CA in `SIGHTLINE_CA`); the other nodes
        /// are found from it.
        #[arg(long, env = "SIGHTLINE_HTTP", default_value = "http://127.0.0.1:8080")]
        http: String,
    },
}

pub async fn run(cmd: &ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status { http } => {
            // Nodes that serve TLS are verified against SIGHTLINE_CA (as
            // the query commands verify the query port).
            let tls = match std::env::var_os("SIGHTLINE_CA") {
                Some(ca) => Some(crate::cluster::peer::PeerTls::load(std::path::Path::new(
                    &ca,
                ))?),
                None => None,
            };
            print!(
                "{}",
                crate::cluster::status::status(http, tls.as_ref()).await?
            );
            Ok(())
        }
    }
}
