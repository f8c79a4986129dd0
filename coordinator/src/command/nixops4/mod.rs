//! Drover as a NixOps4 resource provider: `drover nixops4`, a process
//! NixOps4 starts that reads requests as JSON lines on standard input and
//! writes exactly one response line for each on standard output; logs go
//! to standard error. It reaches the coordinator with an admin bundle the
//! way the CLI does (`DROVER_ADMIN_BUNDLE`, `--admin-bundle`,
//! `--state-dir`).

pub mod resources;
pub mod schema;

use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context as _, Result};

use crate::cli::AdminArgs;

use schema::{Empty, Outputs, Request, Response, StateRead};

/// The longest request line read (a state event's patch is the largest).
const MAX_LINE: usize = 1 << 20;

/// Takes standard output for the protocol alone: the responses go to a
/// copy of it, and descriptor 1 then points at standard error, so that
/// nothing else this process prints can break a response line.
fn protocol_output() -> Result<std::fs::File> {
    let out: OwnedFd = std::io::stdout().as_fd().try_clone_to_owned().context("duplicating standard output")?;
    nix::unistd::dup2(2, 1).context("pointing standard output at standard error")?;
    Ok(std::fs::File::from(out))
}

/// Answers requests until standard input ends.
pub async fn run(admin: AdminArgs) -> Result<()> {
    let mut out = protocol_output()?;
    let base = std::env::current_dir().context("reading the working directory")?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<Line>(1);
    // Standard input is read on a thread of its own: reading it blocks.
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        while let Some(line) = read_line(&mut input) {
            if lines_tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    tracing::info!(schema = schema::SCHEMA_VERSION, "the drover NixOps4 provider is ready");
    while let Some(line) = lines.recv().await {
        let response = match line {
            Line::Request(line) if line.trim().is_empty() => continue,
            Line::Request(line) => answer(&admin, &base, &line).await,
            Line::TooLong => Response::error(format!("a request line is at most {MAX_LINE} bytes; this one was longer and is ignored")),
            Line::NotUtf8 => Response::error("a request line is not UTF-8 text; JSON lines are"),
            Line::Unreadable(e) => return Err(e).context("reading a request"),
        };
        if let Response::ErrorResponse(e) = &response {
            tracing::warn!(error = %e.message, "request refused");
        }
        writeln!(out, "{}", response.line()).and_then(|_| out.flush()).context("writing a response")?;
    }
    Ok(())
}

/// What came on standard input.
enum Line {
    Request(String),
    /// A line longer than [`MAX_LINE`], skipped to its end.
    TooLong,
    NotUtf8,
    Unreadable(std::io::Error),
}

/// The next line, `None` at the end of the input.
fn read_line(input: &mut impl BufRead) -> Option<Line> {
    let mut line = Vec::new();
    match input.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line) {
        Ok(0) => None,
        Err(e) => Some(Line::Unreadable(e)),
        Ok(_) if line.len() > MAX_LINE && !line.ends_with(b"\n") => {
            // Skip the rest of it, so that it is not taken for a request.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match input.by_ref().take(MAX_LINE as u64).read_until(b'\n', &mut rest) {
                    Ok(0) => return Some(Line::TooLong),
                    Ok(_) if rest.ends_with(b"\n") => return Some(Line::TooLong),
                    Ok(_) => continue,
                    Err(e) => return Some(Line::Unreadable(e)),
                }
            }
        }
        Ok(_) => Some(String::from_utf8(line).map(Line::Request).unwrap_or(Line::NotUtf8)),
    }
}

/// One request's response.
async fn answer(admin: &AdminArgs, base: &std::path::Path, line: &str) -> Response {
    let request = match schema::parse(line) {
        Ok(r) => r,
        Err(e) => return Response::error(e),
    };
    let client = match super::connect(admin).await {
        Ok(c) => c,
        Err(e) => return Response::error(format!("{:#}", e)),
    };
    let cx = resources::Cx { client: &client, base };
    let response = handle(&cx, request).await.unwrap_or_else(|e| Response::error(format!("{e:#}")));
    client.close().await;
    response
}

async fn handle(cx: &resources::Cx<'_>, request: Request) -> Result<Response> {
    Ok(match request {
        Request::CreateResourceRequest(r) => {
            tracing::info!(r#type = %r.type_, "create");
            let outputs = resources::create(cx, &r.type_, &r.input_properties, r.is_stateful).await?;
            Response::CreateResourceResponse(Outputs { output_properties: outputs })
        }
        Request::UpdateResourceRequest(r) => {
            tracing::info!(r#type = %r.resource.type_, "update");
            let outputs = resources::update(cx, &r.resource.type_, &r.resource.input_properties, &r.resource.output_properties, &r.input_properties).await?;
            Response::UpdateResourceResponse(Outputs { output_properties: outputs })
        }
        Request::ReadResourceRequest(r) => {
            let outputs = resources::read(cx, &r.resource.type_, &r.resource.input_properties, &r.resource.output_properties).await?;
            Response::ReadResourceResponse(Outputs { output_properties: outputs })
        }
        Request::DestroyResourceRequest(r) => {
            tracing::info!(r#type = %r.resource.type_, "destroy");
            resources::destroy(cx, &r.resource.type_, &r.resource.input_properties, &r.resource.output_properties).await?;
            Response::DestroyResourceResponse(Empty {})
        }
        Request::StateResourceEvent(r) => {
            only_state(&r.resource.type_)?;
            resources::state_event(cx.client, &r.resource.input_properties, &r.event, &r.nixops_version, &r.patch).await?;
            Response::StateResourceEventResponse(Empty {})
        }
        Request::StateResourceReadRequest(r) => {
            only_state(&r.resource.type_)?;
            Response::StateResourceReadResponse(StateRead { state: resources::state_read(cx.client, &r.resource.input_properties).await? })
        }
    })
}

fn only_state(type_: &str) -> Result<()> {
    if type_ == "state" {
        return Ok(());
    }
    anyhow::bail!("{type_}: only a resource of type state keeps NixOps4's state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_too_long_or_not_text_are_one_refusal_each_and_reading_goes_on() {
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"a\":1}\n");
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend_from_slice(b"\n\xff\xfe\n{\"b\":2}\n{\"c\":3}");
        let mut reader = std::io::BufReader::new(&input[..]);
        let mut got = Vec::new();
        while let Some(line) = read_line(&mut reader) {
            got.push(match line {
                Line::Request(r) => r,
                Line::TooLong => "too long".into(),
                Line::NotUtf8 => "not text".into(),
                Line::Unreadable(e) => panic!("{e}"),
            });
        }
        assert_eq!(got, vec!["{\"a\":1}\n", "too long", "not text", "{\"b\":2}\n", "{\"c\":3}"]);
    }
}
