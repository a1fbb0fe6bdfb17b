//! `keygate serve`: the forward-auth service, the key API, and `/healthz`, `/readyz`,
//! `/metrics`.

use std::io::Write;
use std::time::Duration;

use axum::Router;
use clap::Args;
use keygate::forward_auth::ForwardAuth;
use keygate::server::key_server;
use keygate::stack_auth::StackAuthVerifier;
use keygate::{CachedVerifier, KeyVerifier};
use tokio::sync::watch;

use crate::ops::{self, Readiness};
use crate::store::{DatabaseArgs, Store};
use crate::Failure;

mod config;

use config::{config_error, Backend, Config};

/// Flags of `keygate serve`. Every flag can also be set by the environment variable named in
/// `--help`; a flag on the command line wins.
#[derive(Debug, Args)]
#[command(after_help = "Point your proxy's auth request at \
http://LISTEN/v1/authz (nginx auth_request, Traefik ForwardAuth, Caddy forward_auth, Envoy \
ext_authz with path_prefix /v1/authz). A request with a valid API key gets 200 and the \
X-Keygate-Key-Id, -Key-Type, -User-Id and -Team-Id headers; otherwise 401/403 (or 503 when keys \
cannot be checked) with an X-Keygate-Reason header.\n\n\
Keys come from the database (--database-url; create them with `keygate keys create` or the key \
API, enabled by --secret-server-key) or, with --stack-project-id, from Stack Auth.\n\n\
Stops gracefully on SIGTERM or SIGINT.")]
pub(crate) struct ServeArgs {
    /// Address for /v1/authz (and the key API; and /healthz, /readyz, /metrics unless
    /// --admin-listen is set). Port 0 picks a free port; the startup line shows it.
    #[arg(long, env = "KEYGATE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,

    /// Serve /healthz, /readyz and /metrics on this address instead of --listen.
    #[arg(long, env = "KEYGATE_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<String>,

    #[command(flatten)]
    database: DatabaseArgs,

    /// For a SQLite file: how often to look for keys revoked by other processes (such as
    /// `keygate keys revoke`). PostgreSQL pushes revocations instead.
    #[arg(
        long,
        env = "KEYGATE_REVOCATION_POLL_INTERVAL",
        default_value = "200ms",
        value_name = "DURATION"
    )]
    revocation_poll_interval: String,

    /// Verify keys with Stack Auth instead of the database: your project id. Needs
    /// --stack-secret-server-key too.
    #[arg(long, env = "STACK_PROJECT_ID", value_name = "ID")]
    stack_project_id: Option<String>,

    /// Stack Auth mode: your project's secret server key.
    #[arg(
        long,
        env = "STACK_SECRET_SERVER_KEY",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    stack_secret_server_key: Option<String>,

    /// Stack Auth mode: the API's base URL (a self-hosted Stack Auth, or another keygate's key
    /// API).
    #[arg(
        long,
        env = "STACK_API_URL",
        default_value = "https://api.stack-auth.com",
        value_name = "URL"
    )]
    stack_api_url: String,

    /// The project id the key API answers for (its x-stack-project-id header).
    #[arg(
        long,
        env = "KEYGATE_PROJECT_ID",
        default_value = "keygate",
        value_name = "ID"
    )]
    project_id: String,

    /// Serve the Stack Auth-compatible key API (/api/v1/user-api-keys, /api/v1/team-api-keys)
    /// on --listen, to callers presenting this secret (x-stack-secret-server-key; at least 16
    /// characters). Without it, no key API is served.
    #[arg(
        long,
        env = "KEYGATE_SECRET_SERVER_KEY",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    secret_server_key: Option<String>,

    /// How long a valid key's verdict is cached (500ms, 30s, 5m, 1h, 30d). A revocation through
    /// this process, or pushed/polled from the database, takes effect at once anyway.
    #[arg(
        long,
        env = "KEYGATE_CACHE_TTL",
        default_value = "60s",
        value_name = "DURATION"
    )]
    cache_ttl: String,

    /// How long an invalid key's verdict is cached.
    #[arg(
        long,
        env = "KEYGATE_NEGATIVE_CACHE_TTL",
        default_value = "5s",
        value_name = "DURATION"
    )]
    negative_cache_ttl: String,

    /// Which keys are accepted: any, user or team. A request header X-Keygate-Require: user|team
    /// can narrow this per request, never widen it.
    #[arg(
        long,
        env = "KEYGATE_REQUIRE",
        default_value = "any",
        value_name = "KIND"
    )]
    require: String,

    /// Accept public (pk_) keys. By default they get 403.
    #[arg(long, env = "KEYGATE_ALLOW_PUBLIC_KEYS")]
    allow_public_keys: bool,

    /// Read the key from this request header (its whole value) instead of
    /// `Authorization: Bearer <key>`.
    #[arg(long, env = "KEYGATE_KEY_HEADER", value_name = "NAME")]
    key_header: Option<String>,

    /// Allow CORS preflights: a request whose original method is OPTIONS and that carries no
    /// key gets 200 with empty identity headers.
    #[arg(long, env = "KEYGATE_ALLOW_PREFLIGHT")]
    allow_preflight: bool,

    /// Give refusals keygate's JSON body ({"code", "error"}). Off by default: answers are
    /// headers only (the reason is in X-Keygate-Reason), since nginx closes its keep-alive
    /// connection after an auth answer with a body. Turn on for Traefik, Caddy or Envoy, which
    /// pass a refusal's body to the client.
    #[arg(long, env = "KEYGATE_REFUSAL_BODIES")]
    refusal_bodies: bool,

    /// Peers (comma-separated IPs and CIDR blocks) whose X-Forwarded-*, X-Original-* and
    /// X-Real-IP headers are believed; from anyone else they are ignored.
    #[arg(
        long,
        env = "KEYGATE_TRUSTED_PROXIES",
        default_value = "127.0.0.0/8,::1",
        value_name = "LIST"
    )]
    trusted_proxies: String,

    /// Allow each key N requests per second (off by default); over it: 429 + Retry-After.
    #[arg(long, env = "KEYGATE_RATE_LIMIT", value_name = "N")]
    rate_limit: Option<String>,

    /// With --rate-limit: how many requests a key may send at once (default N).
    #[arg(long, env = "KEYGATE_RATE_LIMIT_BURST", value_name = "N")]
    rate_limit_burst: Option<String>,

    /// With --rate-limit: count per key, or per owner (all keys of a user or a team together).
    #[arg(
        long,
        env = "KEYGATE_RATE_LIMIT_BY",
        default_value = "key",
        value_name = "key|owner"
    )]
    rate_limit_by: String,

    /// Throttle a client address after N refused keys per minute (brute force); off by
    /// default. The address comes from X-Forwarded-For / X-Real-IP only from trusted proxies.
    #[arg(long, env = "KEYGATE_REFUSAL_LIMIT", value_name = "N")]
    refusal_limit: Option<String>,

    /// Status of a rate-limit refusal: 429, or 403 for nginx (which turns a 429 from the auth
    /// service into a 500).
    #[arg(
        long,
        env = "KEYGATE_LIMIT_STATUS",
        default_value = "429",
        value_name = "429|403"
    )]
    limit_status: String,

    /// Log filter, RUST_LOG syntax (e.g. info, keygate=debug). Logs go to stderr and never
    /// contain a key.
    #[arg(
        long,
        env = "KEYGATE_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,
}

/// Installs the log subscriber (stderr).
fn init_logs(filter: &str) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| config_error(format!("--log {filter:?} is not a log filter: {e}")))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| Failure::Runtime(format!("cannot set up logging: {e}")))
}

/// Runs the service until SIGTERM or SIGINT.
pub(crate) async fn run(args: ServeArgs) -> Result<(), Failure> {
    let config = args.config()?;
    init_logs(&args.log)?;
    match &config.backend {
        Backend::StackAuth(stack) => {
            let verifier = StackAuthVerifier::builder(stack.clone())
                .build()
                .map_err(|e| config_error(format!("Stack Auth settings: {e}")))?;
            let readiness = Readiness::StackAuth {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .map_err(|e| Failure::Runtime(format!("cannot build an HTTP client: {e}")))?,
                url: format!("{}/api/v1", stack.base()),
            };
            tracing::info!(
                project_id = stack.project_id(),
                api = stack.base(),
                "keys verified by Stack Auth"
            );
            let cache = cached(&config, verifier);
            run_with(&config, cache, None, readiness, None).await
        }
        Backend::Database => match args.database.open().await? {
            Store::Postgres(store) => {
                let cache = cached(&config, store.clone());
                let feed = keygate::fleet::PgRevocationFeed::for_pool(store.pool())
                    .spawn(&cache)
                    .map_err(|e| {
                        Failure::Runtime(format!("cannot start the revocation feed: {e}"))
                    })?;
                let readiness = Readiness::Postgres(store.pool().clone());
                let api = key_api(&config, store);
                run_with(&config, cache, api, readiness, Some(feed)).await
            }
            Store::Sqlite(store) => {
                let cache = cached(&config, store.clone());
                // Revocations by other processes on the same file (`keygate keys revoke`,
                // another `serve`) reach this cache within about one poll interval.
                let feed = keygate::fleet::SqliteRevocationFeed::for_pool(store.pool())
                    .poll_interval(config.poll_interval)
                    .spawn(&cache)
                    .map_err(|e| {
                        Failure::Runtime(format!("cannot start the revocation feed: {e}"))
                    })?;
                let readiness = Readiness::Sqlite(store.pool().clone());
                let api = key_api(&config, store);
                run_with(&config, cache, api, readiness, Some(feed)).await
            }
        },
    }
}

fn cached<V: KeyVerifier>(config: &Config, verifier: V) -> CachedVerifier<V> {
    CachedVerifier::builder(verifier)
        .ttl(config.cache_ttl)
        .negative_ttl(config.negative_cache_ttl)
        .build()
}

fn key_api<S: keygate::KeyStore>(config: &Config, store: S) -> Option<Router> {
    config.key_api.clone().map(|api| key_server(store, api))
}

/// Serves until a signal, with `cache` behind the forward-auth router.
async fn run_with<V: KeyVerifier>(
    config: &Config,
    cache: CachedVerifier<V>,
    key_api: Option<Router>,
    readiness: Readiness,
    feed: Option<keygate::fleet::RevocationFeed>,
) -> Result<(), Failure> {
    let metrics = ops::install_metrics()?;
    let policy = &config.policy;
    let mut authz = ForwardAuth::new(cache)
        .require(policy.require)
        .allow_public_keys(policy.allow_public_keys)
        .allow_preflight(policy.allow_preflight)
        .extractor(policy.extractor.clone())
        .trusted_proxies(policy.trusted.clone())
        .limit_status(policy.limit_status)
        .refusal_bodies(policy.refusal_bodies);
    if let Some((rate, burst, by)) = policy.rate_limit {
        authz = authz.rate_limit(rate, burst, by);
    }
    if let Some(quota) = policy.refusal_limit {
        authz = authz.refusal_limit(quota);
    }
    let mut main = authz.router();
    if let Some(api) = key_api {
        main = main.merge(api);
    }
    let ops_routes = ops::routes(readiness, metrics);
    let (stop_tx, stop_rx) = watch::channel(false);
    let main_listener = ops::bind(config.listen, "--listen").await?;
    let mut servers = tokio::task::JoinSet::new();
    let mut stdout = std::io::stdout().lock();
    if let Some(admin) = config.admin_listen {
        let listener = ops::bind(admin, "--admin-listen").await?;
        let local = listener.local_addr().unwrap_or(admin);
        let _ = writeln!(stdout, "keygate: admin listening on http://{local}");
        servers.spawn(ops::serve(listener, ops_routes, stop_rx.clone()));
    } else {
        main = main.merge(ops_routes);
    }
    let local = main_listener.local_addr().unwrap_or(config.listen);
    let _ = writeln!(stdout, "keygate: listening on http://{local}");
    let _ = stdout.flush();
    drop(stdout);
    tracing::info!(listen = %local, "keygate serve started");
    servers.spawn(ops::serve(main_listener, main, stop_rx));
    let signal = tokio::spawn(ops::wait_for_signal(stop_tx));
    let mut result = Ok(());
    while let Some(joined) = servers.join_next().await {
        let outcome = joined.map_err(|e| Failure::Runtime(format!("a listener task failed: {e}")));
        if let Err(failure) = outcome.and_then(|served| served) {
            // One listener failing stops the others.
            signal.abort();
            result = Err(failure);
            servers.abort_all();
        }
    }
    if let Some(feed) = feed {
        feed.shutdown().await;
    }
    tracing::info!("keygate serve stopped");
    result
}
