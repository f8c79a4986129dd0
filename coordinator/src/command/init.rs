//! `drover init`.

use anyhow::Result;

use crate::cli::InitArgs;
use crate::init::{init, InitOptions};

pub fn run(args: InitArgs) -> Result<()> {
    let outcome = init(InitOptions {
        state_dir: args.state_dir,
        listen: args.listen,
        advertise: args.advertise,
        server_names: args.server_names,
        admin_name: args.admin_name,
        health_interval: args.health_interval,
        machine_cert_lifetime: args.machine_cert_lifetime,
        store: args.etcd.store(),
        join: args.join.clone(),
    })?;
    let dir = &outcome.config.state_dir;
    crate::out!("created {}", dir.display());
    crate::out!("  configuration   {}", outcome.config_path.display());
    crate::out!("  fleet CA        {}", dir.join(crate::pki::CA_CERT_FILE).display());
    if args.join.is_some() {
        crate::out!("  admin bundle    none: the fleet's admins use theirs with --coordinator {}", outcome.config.advertise);
    } else {
        crate::out!("  admin bundle    {}", outcome.bundle_path.display());
    }
    match &outcome.config.store {
        Some(etcd) => crate::out!("  store           etcd {} under {}", etcd.etcd_endpoints.join(","), etcd.prefix),
        None => crate::out!("  store           {}", dir.join(crate::store::DB_DIR).display()),
    }
    crate::out!("  listen          {} (clients dial {})", outcome.config.listen, outcome.config.advertise);
    crate::out!("next: drover serve --state-dir {}", dir.display());
    Ok(())
}
