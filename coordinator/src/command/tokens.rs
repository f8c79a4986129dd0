//! `drover tokens create|list|revoke`.

use anyhow::Result;

use drover_protocol::v1::{AdminRequest, TokenSpec};

use crate::cli::TokensCommand;
use crate::output::{self, OutputFormat};
use drover_net::clock::now_ms;

use super::{call, labels, print_json};

pub async fn run(cmd: TokensCommand) -> Result<()> {
    match cmd {
        TokensCommand::Create { labels: pairs, ttl, uses, admin } => {
            let spec = TokenSpec { labels: labels(pairs), ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX), uses };
            let answer = call(&admin, AdminRequest::TokensCreate(spec), "creating the token").await?;
            let created = answer.token_created()?;
            match admin.output {
                OutputFormat::Json => print_json(&created)?,
                OutputFormat::Table => {
                    // Redirected, the token is not on the screen: say where it went.
                    let shown = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                        "it is shown only now:"
                    } else {
                        "it went to standard output and is shown only this once"
                    };
                    eprintln!(
                        "token {} ({} use(s), expires {}); {shown}",
                        created.info.id,
                        created.info.uses_total,
                        output::timestamp(created.info.expires_at)
                    );
                    crate::out!("{}", created.token.expose());
                }
            }
        }
        TokensCommand::List { admin } => {
            let answer = call(&admin, AdminRequest::TokensList, "listing tokens").await?;
            let tokens = answer.tokens()?;
            match admin.output {
                OutputFormat::Json => print_json(&tokens)?,
                OutputFormat::Table => {
                    let now = now_ms();
                    let mut t = output::table(&["ID", "LABELS", "USES LEFT", "EXPIRES", "STATE"]);
                    for tok in &tokens {
                        let state = if tok.revoked {
                            "revoked"
                        } else if tok.expires_at <= now {
                            "expired"
                        } else if tok.uses_left == 0 {
                            "used up"
                        } else {
                            "usable"
                        };
                        t.add_row(vec![
                            tok.id.clone(),
                            output::labels(&tok.labels),
                            format!("{}/{}", tok.uses_left, tok.uses_total),
                            output::until(tok.expires_at, now),
                            state.to_string(),
                        ]);
                    }
                    crate::out!("{t}");
                }
            }
        }
        TokensCommand::Revoke { id, admin } => {
            call(&admin, AdminRequest::TokensRevoke { id: id.clone() }, &format!("revoking token {id}")).await?;
            match admin.output {
                OutputFormat::Json => print_json(&serde_json::json!({ "revoked": id }))?,
                OutputFormat::Table => crate::out!("token {id} revoked"),
            }
        }
    }
    Ok(())
}
