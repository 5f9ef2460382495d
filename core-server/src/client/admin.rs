//! `sightline-core users|tokens|sessions …`: accounts, API tokens and
//! dashboard sessions, over `sightline.v1.Admin` with an admin credential.

use std::io::BufRead;

use clap::Subcommand;
use sightline_proto::v1::{
    admin_client::AdminClient, revoke_session_request::Target, AddUserRequest, CreateTokenRequest,
    ListSessionsRequest, ListTokensRequest, ListUsersRequest, RevokeSessionRequest,
    RevokeTokenRequest, Role as WireRole, UpdateUserRequest,
};
use tonic::{codegen::InterceptedService, transport::Channel};

use super::{fmt_ms, WithCredential};
use crate::access::Role;

type Client = AdminClient<InterceptedService<Channel, WithCredential>>;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Make an account; its password is read from the first line of stdin.
    Add {
        name: String,
        /// viewer, investigator or admin.
        #[arg(long)]
        role: String,
        /// Locations it may see (comma-separated oids); none: every location.
        #[arg(long, value_delimiter = ',')]
        locations: Vec<i64>,
    },
    List,
    /// Disable an account (its sessions end at once).
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Change an account's role (and, with --locations, its scope).
    SetRole {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long, value_delimiter = ',')]
        locations: Option<Vec<i64>>,
    },
    /// Set a new password, read from the first line of stdin.
    ResetPassword {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make an API token and print it (once; only its hash is kept).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long, value_delimiter = ',')]
        locations: Vec<i64>,
        /// e.g. 90d; none: never expires.
        #[arg(long)]
        expires: Option<humantime::Duration>,
    },
    List,
    /// Revoke a token by id or name (its open streams end at once).
    Revoke {
        token: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    List,
    /// End a session by its handle, or every session of --user.
    Revoke {
        handle: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
}

fn wire_role(s: &str) -> anyhow::Result<i32> {
    Ok(crate::api::admin::role_to_wire(
        Role::parse("--role", s).map_err(|e| anyhow::anyhow!("{e}"))?,
    ))
}

fn role_name(r: i32) -> &'static str {
    match WireRole::try_from(r) {
        Ok(WireRole::Viewer) => "viewer",
        Ok(WireRole::Investigator) => "investigator",
        Ok(WireRole::Admin) => "admin",
        _ => "?",
    }
}

fn scope(l: &[i64]) -> String {
    if l.is_empty() {
        "all".into()
    } else {
        l.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn password_from_stdin() -> anyhow::Result<String> {
    eprintln!("password (one line on stdin):");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn msg(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

pub async fn users(mut c: Client, cmd: UsersCommand) -> anyhow::Result<()> {
    let update = |name: String| UpdateUserRequest {
        name,
        ..Default::default()
    };
    let u = match cmd {
        UsersCommand::Add {
            name,
            role,
            locations,
        } => {
            let role = wire_role(&role)?;
            let password = password_from_stdin()?;
            c.add_user(AddUserRequest {
                name,
                role,
                locations,
                password,
            })
            .await
            .map_err(msg)?
            .into_inner()
        }
        UsersCommand::List => {
            let r = c
                .list_users(ListUsersRequest {})
                .await
                .map_err(msg)?
                .into_inner();
            println!(
                "{:<24} {:<13} {:<9} {:<24} locations",
                "name", "role", "state", "changed"
            );
            for u in r.users {
                println!(
                    "{:<24} {:<13} {:<9} {:<24} {}",
                    u.name,
                    role_name(u.role),
                    if u.disabled { "disabled" } else { "active" },
                    fmt_ms(u.changed_ms),
                    scope(&u.locations)
                );
            }
            return Ok(());
        }
        UsersCommand::Disable { name } => c
            .update_user(UpdateUserRequest {
                disabled: Some(true),
                ..update(name)
            })
            .await
            .map_err(msg)?
            .into_inner(),
        UsersCommand::Enable { name } => c
            .update_user(UpdateUserRequest {
                disabled: Some(false),
                ..update(name)
            })
            .await
            .map_err(msg)?
            .into_inner(),
        UsersCommand::SetRole {
            name,
            role,
            locations,
        } => c
            .update_user(UpdateUserRequest {
                role: Some(wire_role(&role)?),
                set_locations: locations.is_some(),
                locations: locations.unwrap_or_default(),
                ..update(name)
            })
            .await
            .map_err(msg)?
            .into_inner(),
        UsersCommand::ResetPassword { name } => {
            let password = password_from_stdin()?;
            c.update_user(UpdateUserRequest {
                password: Some(password),
                ..update(name)
            })
            .await
            .map_err(msg)?
            .into_inner()
        }
    };
    println!(
        "{} role={} locations={} {}",
        u.name,
        role_name(u.role),
        scope(&u.locations),
        if u.disabled { "disabled" } else { "active" }
    );
    Ok(())
}

pub async fn tokens(mut c: Client, cmd: TokensCommand) -> anyhow::Result<()> {
    match cmd {
        TokensCommand::Create {
            name,
            role,
            locations,
            expires,
        } => {
            let expires_ms = expires.map_or(0, |d| {
                sightline_proto::now_ms() + std::time::Duration::from(d).as_millis() as i64
            });
            let r = c
                .create_token(CreateTokenRequest {
                    name,
                    role: wire_role(&role)?,
                    locations,
                    expires_ms,
                })
                .await
                .map_err(msg)?
                .into_inner();
            let t = r.token.unwrap_or_default();
            eprintln!(
                "token {} ({}, {}, locations {}){}; shown once — keep it now:",
                t.id,
                t.name,
                role_name(t.role),
                scope(&t.locations),
                if t.expires_ms > 0 {
                    format!(", expires {}", fmt_ms(t.expires_ms))
                } else {
                    String::new()
                }
            );
            println!("{}", r.secret);
        }
        TokensCommand::List => {
            let r = c
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(msg)?
                .into_inner();
            println!(
                "{:<17} {:<20} {:<13} {:<24} {:<24} {:<10} locations",
                "id", "name", "role", "last used", "expires", "state"
            );
            let now = sightline_proto::now_ms();
            for t in r.tokens {
                let state = if t.revoked_ms > 0 {
                    "revoked"
                } else if t.expires_ms > 0 && t.expires_ms <= now {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<17} {:<20} {:<13} {:<24} {:<24} {:<10} {}",
                    t.id,
                    t.name,
                    role_name(t.role),
                    if t.last_used_ms > 0 {
                        fmt_ms(t.last_used_ms)
                    } else {
                        "never".into()
                    },
                    if t.expires_ms > 0 {
                        fmt_ms(t.expires_ms)
                    } else {
                        "never".into()
                    },
                    state,
                    scope(&t.locations)
                );
            }
        }
        TokensCommand::Revoke { token } => {
            let t = c
                .revoke_token(RevokeTokenRequest { token })
                .await
                .map_err(msg)?
                .into_inner();
            println!("revoked token {} ({})", t.id, t.name);
        }
    }
    Ok(())
}

pub async fn sessions(mut c: Client, cmd: SessionsCommand) -> anyhow::Result<()> {
    match cmd {
        SessionsCommand::List => {
            let r = c
                .list_sessions(ListSessionsRequest {})
                .await
                .map_err(msg)?
                .into_inner();
            println!(
                "{:<17} {:<20} {:<13} {:<40} {:<24} last used",
                "handle", "user", "role", "source", "login"
            );
            for s in r.sessions {
                println!(
                    "{:<17} {:<20} {:<13} {:<40} {:<24} {}",
                    s.handle,
                    s.user,
                    role_name(s.role),
                    s.source,
                    fmt_ms(s.created_ms),
                    fmt_ms(s.last_used_ms)
                );
            }
        }
        SessionsCommand::Revoke { handle, user } => {
            let target = match (handle, user) {
                (Some(h), None) => Target::Handle(h),
                (None, Some(u)) => Target::User(u),
                _ => anyhow::bail!("give a session handle or --user, not both"),
            };
            let r = c
                .revoke_session(RevokeSessionRequest {
                    target: Some(target),
                })
                .await
                .map_err(msg)?
                .into_inner();
            println!("{} session(s) ended", r.ended);
        }
    }
    Ok(())
}
