//! `linstor-double --root DIR --listen 127.0.0.1:3370 --node vm1 --node vm2`:
//! the LINSTOR controller double as a process, for the demo. It serves until
//! SIGINT or SIGTERM, then unmounts what agents mounted under its root and
//! frees its loop devices.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(name = "linstor-double", about = "A LINSTOR controller test double (REST API v1 over loop devices); needs root")]
struct Cli {
    /// Where volumes (sparse files), snapshots and the nodes' device links live.
    #[arg(long)]
    root: PathBuf,
    /// Address to serve LINSTOR's REST API on.
    #[arg(long, default_value = "127.0.0.1:3370")]
    listen: SocketAddr,
    /// A machine's node (repeatable); `stor1` and `stor2` hold the replicas.
    #[arg(long = "node")]
    nodes: Vec<String>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let nodes: Vec<&str> = cli.nodes.iter().map(String::as_str).collect();
    let double = linstor_double::LinstorDouble::start_on(&cli.root, &nodes, cli.listen).await;
    println!("LINSTOR double serving {} (root {})", double.url, cli.root.display());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot wait for SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(double);
}
