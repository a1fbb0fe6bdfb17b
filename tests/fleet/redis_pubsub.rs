//! Redis pub/sub feeds, for fleets that verify through Stack Auth: keys are managed through
//! `StackAuthClient` against keygate's key server (playing Stack Auth on a loopback port), and
//! revocations are published by a `RedisRevocationPublisher` attached to the revoking client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keygate::fleet::{
    Backoff, FeedState, OnReconnect, RedisRevocationFeed, RedisRevocationPublisher, RevocationFeed,
};
use keygate::server::{key_server, KeyServerConfig};
use keygate::stack_auth::{StackAuthClient, StackAuthConfig, StackAuthVerifier};
use keygate::store::CreatedKey;
use keygate::{CachedVerifier, MemoryKeyStore, NewKey, Owner};
use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::common::store_suite::service_url;
use crate::{report, suffix, until_all_refuse, warm, ROUNDS, TTL, WAIT, WITHIN};

const PROJECT: &str = "0f6c0f5e-8a0e-4c38-9d7e-3b0b8c1d2e3f";
const SECRET: &str = "ssk_keygate_fleet_secret_server_key";

/// One test's world: a key server, a Redis channel of its own, an admin connection.
struct World {
    url: String,
    upstream: SocketAddr,
    channel: String,
    redis: redis::aio::MultiplexedConnection,
}

impl World {
    async fn start() -> Option<Self> {
        let url = service_url("REDIS_URL")?;
        let app = key_server(
            MemoryKeyStore::new(),
            KeyServerConfig::new(PROJECT, SECRET).expect("config"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let upstream = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("key server") });
        let redis = redis::Client::open(url.as_str())
            .expect("REDIS_URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to REDIS_URL");
        Some(Self {
            url,
            upstream,
            channel: format!("keygate_revocations_{}", suffix()),
            redis,
        })
    }

    fn config(&self) -> StackAuthConfig {
        StackAuthConfig::new(PROJECT, SECRET).base_url(format!("http://{}", self.upstream))
    }

    /// An instance: its own verifier (and HTTP client), its own cache, its own subscription.
    async fn instance(&self, feed: RedisRevocationFeed) -> Instance {
        let verifier = StackAuthVerifier::builder(self.config())
            .build()
            .expect("verifier");
        let admin = verifier.admin_client();
        let cache = CachedVerifier::builder(verifier).ttl(TTL).build();
        let feed = feed
            .channel(&self.channel)
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
            .spawn(&cache)
            .expect("spawn");
        assert!(feed.wait_connected(WAIT).await, "{:?}", feed.status());
        Instance { cache, feed, admin }
    }

    fn feed(&self) -> RedisRevocationFeed {
        RedisRevocationFeed::connect(&self.url)
    }

    async fn publisher(&self) -> RedisRevocationPublisher {
        RedisRevocationPublisher::connect_on(&self.url, &self.channel)
            .await
            .expect("publisher")
    }

    async fn command<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let mut conn = self.redis.clone();
        cmd.query_async(&mut conn).await.expect("redis command")
    }
}

struct Instance {
    cache: CachedVerifier<StackAuthVerifier>,
    feed: RevocationFeed,
    admin: StackAuthClient,
}

fn owner() -> Owner {
    Owner::user("8d7f7a34-3f5e-4a7e-9a51-2a1b4c5d6e7f")
}

async fn new_key(admin: &StackAuthClient) -> CreatedKey {
    admin
        .create(&owner(), &NewKey::new("fleet"))
        .await
        .expect("create")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_refuse_a_key_revoked_through_one_within_a_second() {
    let Some(world) = World::start().await else {
        return;
    };
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(world.instance(world.feed()).await);
    }
    // Every instance can revoke; each one's revocations are published.
    let publisher = world.publisher().await;
    for instance in &fleet {
        publisher.attach(&instance.admin);
    }
    let caches: Vec<_> = fleet.iter().map(|i| &i.cache).collect();
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        let revoker = &fleet[round % 3].admin;
        let created = new_key(revoker).await;
        warm(&caches, &created.key).await;
        let start = Instant::now();
        revoker
            .revoke(&owner(), created.record.id)
            .await
            .expect("revoke");
        match until_all_refuse(&caches, &created.key, start, WITHIN).await {
            Ok(delay) => delays.push(delay),
            Err(still) => panic!("round {round}: instances {still:?} still accept the key"),
        }
        // The revoker's own cache was told at once, by its client; its copy of the publication
        // may still be on the way. Any invalidation keeps a lookup under way from caching its
        // answer, so let it land before the next round warms the caches.
        for instance in &fleet {
            let feed = &instance.feed;
            assert!(
                feed.wait_for(WAIT, |s| s.events == round as u64 + 1).await,
                "{:?}",
                feed.status()
            );
        }
    }
    let (_, max) = report("redis, 3 instances", &mut delays);
    assert!(max <= WITHIN);
    for (i, instance) in fleet.iter().enumerate() {
        let status = instance.feed.status();
        assert_eq!(status.events, ROUNDS as u64, "instance {i}: {status:?}");
        assert_eq!((status.ignored, status.reconnects), (0, 0), "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_publish_reports_the_subscribers_and_garbage_is_ignored() {
    let Some(world) = World::start().await else {
        return;
    };
    let instance = world.instance(world.feed()).await;
    // A client that is not the instance's own: only Redis can tell the instance.
    let client = StackAuthClient::new(world.config()).expect("client");
    let publisher = world.publisher().await;
    let created = new_key(&client).await;
    warm(&[&instance.cache], &created.key).await;
    for payload in ["", "not a key id", "sk_0123456789abcdef"] {
        let receivers: u64 = world
            .command(redis::cmd("PUBLISH").arg(&world.channel).arg(payload))
            .await;
        assert_eq!(receivers, 1);
    }
    let feed = &instance.feed;
    assert!(
        feed.wait_for(WAIT, |s| s.ignored == 3).await,
        "{:?}",
        feed.status()
    );
    assert!(crate::accepts(&instance.cache, &created.key).await);
    let start = Instant::now();
    let record = publisher
        .revoke(&client, &owner(), created.record.id)
        .await
        .expect("revoked and published");
    assert_eq!(record.id, created.record.id);
    until_all_refuse(&[&instance.cache], &created.key, start, WITHIN)
        .await
        .expect("refused");
    assert!(feed.status().is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_during_a_subscriber_outage_is_enforced_once_the_subscriber_is_back() {
    let Some(world) = World::start().await else {
        return;
    };
    // An ACL user of the test's own for the feeds, which the test can lock out.
    let user = format!("fleet_feed_{}", suffix());
    let password = suffix();
    let _: () = world
        .command(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&user)
                .arg("on")
                .arg(format!(">{password}"))
                .arg("~*")
                .arg("&*")
                .arg("+@all"),
        )
        .await;
    let info: ConnectionInfo = world
        .url
        .as_str()
        .into_connection_info()
        .expect("REDIS_URL");
    let settings = info
        .redis_settings()
        .clone()
        .set_username(&user)
        .set_password(&password);
    let client = redis::Client::open(info.set_redis_settings(settings)).expect("client");
    let feed = || RedisRevocationFeed::with_client(client.clone());
    let empties = world.instance(feed()).await;
    let keeps = world
        .instance(feed().on_reconnect(OnReconnect::KeepCache))
        .await;
    let both = [&empties.cache, &keeps.cache];
    let revoker = StackAuthClient::new(world.config()).expect("client");
    let publisher = world.publisher().await;
    publisher.attach(&revoker);
    let (missed, later) = (new_key(&revoker).await, new_key(&revoker).await);
    warm(&both, &missed.key).await;
    warm(&both, &later.key).await;

    // The outage: the user is disabled and its subscriptions are killed.
    let _: () = world
        .command(redis::cmd("ACL").arg("SETUSER").arg(&user).arg("off"))
        .await;
    let killed: u64 = world
        .command(
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .arg("USER")
                .arg(&user),
        )
        .await;
    assert_eq!(killed, 2, "both subscriptions found");
    for instance in [&empties, &keeps] {
        let feed = &instance.feed;
        assert!(
            feed.wait_for(WAIT, |s| s.state == FeedState::Reconnecting
                && s.failed_attempts >= 1)
                .await,
            "{:?}",
            feed.status()
        );
    }
    revoker
        .revoke(&owner(), missed.record.id)
        .await
        .expect("revoke");
    let receivers = publisher.publish(missed.record.id).await.expect("publish");
    assert_eq!(receivers, 0, "nobody is listening during the outage");
    // While disconnected, both keep serving from their caches (within the TTL).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for cache in both {
        let calls = cache.stats().verifier_calls;
        assert!(
            crate::accepts(cache, &missed.key).await,
            "served from cache"
        );
        assert_eq!(cache.stats().verifier_calls, calls);
    }

    // Back: the default empties its cache once subscribed again; KeepCache does not.
    let _: () = world
        .command(redis::cmd("ACL").arg("SETUSER").arg(&user).arg("on"))
        .await;
    for instance in [&empties, &keeps] {
        let feed = &instance.feed;
        assert!(
            feed.wait_for(WAIT, |s| s.is_connected() && s.reconnects == 1)
                .await,
            "{:?}",
            feed.status()
        );
    }
    assert!(
        !crate::accepts(&empties.cache, &missed.key).await,
        "enforced"
    );
    assert!(
        crate::accepts(&keeps.cache, &missed.key).await,
        "KeepCache: a missed revocation waits for the TTL"
    );
    let start = Instant::now();
    revoker
        .revoke(&owner(), later.record.id)
        .await
        .expect("revoke");
    until_all_refuse(&both, &later.key, start, WITHIN)
        .await
        .expect("the feeds work again");

    let (a, b) = (empties.feed, keeps.feed);
    a.shutdown().await;
    b.shutdown().await;
    let _: u64 = world
        .command(redis::cmd("ACL").arg("DELUSER").arg(&user))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_keep_an_idle_subscription_and_lose_nothing() {
    let Some(world) = World::start().await else {
        return;
    };
    let feed = world
        .feed()
        .health_check_interval(Duration::from_millis(20));
    let instance = world.instance(feed).await;
    let created = new_key(&instance.admin).await;
    warm(&[&instance.cache], &created.key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Revoked through a client of its own: only Redis can tell the instance.
    let client = StackAuthClient::new(world.config()).expect("client");
    let publisher = world.publisher().await;
    let start = Instant::now();
    client
        .revoke(&owner(), created.record.id)
        .await
        .expect("revoke");
    assert_eq!(
        publisher.publish(created.record.id).await.expect("publish"),
        1
    );
    until_all_refuse(&[&instance.cache], &created.key, start, WITHIN)
        .await
        .expect("refused");
    let status = instance.feed.status();
    assert!(status.is_connected(), "{status:?}");
    assert_eq!((status.events, status.reconnects), (1, 0), "{status:?}");
}

#[cfg(feature = "metrics")]
#[test]
fn the_feed_records_one_lag_sample_per_timed_revocation() {
    use crate::common::recorded::{recorded, sample};

    let ran = std::cell::Cell::new(false);
    let rendered = recorded(|| async {
        let Some(world) = World::start().await else {
            return;
        };
        let instance = world.instance(world.feed()).await;
        let publisher = world.publisher().await;
        for _ in 0..3 {
            let receivers = publisher
                .publish(uuid::Uuid::new_v4())
                .await
                .expect("publish");
            assert_eq!(receivers, 1);
        }
        // The bare id older publishers send: a revocation, without a time.
        let _: u64 = world
            .command(
                redis::cmd("PUBLISH")
                    .arg(&world.channel)
                    .arg(uuid::Uuid::new_v4().to_string()),
            )
            .await;
        let feed = &instance.feed;
        assert!(
            feed.wait_for(WAIT, |s| s.events == 4).await,
            "{:?}",
            feed.status()
        );
        ran.set(true);
    });
    if !ran.get() {
        return;
    }
    let series = |name: &str| {
        sample(&rendered, &format!("{name}{{feed=\"redis\"}}"))
            .unwrap_or_else(|| panic!("no {name} in:\n{rendered}"))
    };
    assert_eq!(series("keygate_fleet_revocations_total"), 4.0);
    assert_eq!(series("keygate_fleet_revocation_lag_seconds_count"), 3.0);
    // Published and received on this host within the test.
    let sum = series("keygate_fleet_revocation_lag_seconds_sum");
    assert!((0.0..30.0).contains(&sum), "lag sum {sum}");
}
