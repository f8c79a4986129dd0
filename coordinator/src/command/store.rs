//! `drover store migrate`: a stopped coordinator's sled store into etcd.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use drover_net::identity;

use crate::cli::{MigrateArgs, StoreCommand};
use crate::config::{Config, CONFIG_FILE};
use crate::output::OutputFormat;
use crate::pki::Ca;
use crate::store::{Store, DB_DIR};

use super::print_json;

/// Records per etcd transaction (etcd takes at most 128 operations in one).
const BATCH: usize = 100;

pub fn run(command: StoreCommand) -> Result<()> {
    match command {
        StoreCommand::Migrate(args) => migrate(args),
    }
}

fn migrate(args: MigrateArgs) -> Result<()> {
    let Some(etcd) = args.etcd.store() else {
        bail!("name the etcd store to move into: --store etcd://HOST:PORT[,HOST:PORT…][/PREFIX]");
    };
    let config_path = args.state_dir.join(CONFIG_FILE);
    let mut config = Config::load(&config_path)?;
    if let Some(store) = &config.store {
        bail!("{} already keeps its records in etcd ({}); nothing to migrate", config_path.display(), store.etcd_endpoints.join(", "));
    }
    let ca = Ca::load(&args.state_dir).with_context(|| format!("loading the fleet CA from {}", args.state_dir.display()))?;
    let target_config = etcd.config(&ca.fleet_id())?;
    // Opening sled takes its lock: a coordinator still serving this
    // directory makes this fail, naming it.
    let source =
        Store::open(&args.state_dir.join(DB_DIR)).with_context(|| format!("opening the store in {} (stop its coordinator first)", args.state_dir.display()))?;
    let target =
        Store::open_etcd(target_config.etcd_options()?).with_context(|| format!("connecting to etcd at {}", target_config.etcd_endpoints.join(", ")))?;
    if !target.holds_only_its_schema()? {
        bail!(
            "etcd already holds records under {:?}; migrate only into an empty prefix (if they are left from an interrupted migration of this store, remove them with `etcdctl del --prefix {}` and run this again)",
            target_config.prefix,
            target_config.prefix
        );
    }
    let bar = ProgressBar::new_spinner();
    if args.output == OutputFormat::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(ProgressStyle::with_template("{spinner} copying records: {msg}").expect("static template"));
    let copied = source.copy_into(&target, BATCH, |n| bar.set_message(n.to_string()));
    bar.finish_and_clear();
    let counts = copied.context("copying the records into etcd")?;
    if target.meta(crate::store::FLEET_ID_KEY)?.is_none() {
        target.set_meta(crate::store::FLEET_ID_KEY, &ca.fleet_id())?;
    }
    config.store = Some(target_config.clone());
    config.check_values()?;
    identity::write_atomic(&config_path, config.to_toml().as_bytes(), 0o600).with_context(|| format!("writing {}", config_path.display()))?;
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    match args.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "records": total,
            "trees": counts.iter().map(|(name, n)| (name.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
            "etcd_endpoints": target_config.etcd_endpoints,
            "prefix": target_config.prefix,
            "config": config_path,
            "sled_store_kept": args.state_dir.join(DB_DIR),
        }))?,
        OutputFormat::Table => {
            crate::out!("copied {total} records into etcd {} under {} and read them back:", target_config.etcd_endpoints.join(","), target_config.prefix);
            for (name, n) in counts.iter().filter(|(_, n)| *n > 0) {
                crate::out!("  {name:<12} {n}");
            }
            crate::out!(
                "{} now names the etcd store; the sled store in {} is kept (remove it when satisfied)",
                config_path.display(),
                args.state_dir.join(DB_DIR).display()
            );
            crate::out!("next: drover serve --state-dir {}", args.state_dir.display());
        }
    }
    Ok(())
}
