//! The `annals` binary end to end: a real process serving both APIs on loopback, a command
//! over gRPC, a read-your-writes query through the projections, and a clean SIGTERM shutdown.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use schemas::auth::{NewToken, Role, TokenStore};
use schemas::v1 as pb;
use sqlx::PgPool;
use tonic::Request;
use tonic::metadata::MetadataValue;
use uuid::Uuid;

/// The URL of this test's own database on the server of `DATABASE_URL`.
fn test_database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").unwrap();
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let (server, query) = base
        .split_once('?')
        .map_or((base.as_str(), None), |(s, q)| (s, Some(q)));
    let server = &server[..server.rfind('/').unwrap()];
    query.map_or_else(
        || format!("{server}/{db}"),
        |q| format!("{server}/{db}?{q}"),
    )
}

/// The URL of this test's database for a login of the services' role (`annals_service`,
/// which the migrations set up): the binary refuses the owner login the tests connect as.
async fn service_database_url(pool: &PgPool) -> String {
    // Roles are cluster-wide and tests run in parallel: whoever comes first creates it.
    sqlx::query(
        "DO $$ BEGIN \
           CREATE ROLE annals_test_service LOGIN PASSWORD 'annals_test_service' \
             IN ROLE annals_service; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
         END $$",
    )
    .execute(pool)
    .await
    .unwrap();
    let url = test_database_url(pool);
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://annals_test_service:annals_test_service@{host}")
}

/// Kills the server process if the test ends early, so a failed assertion leaks no process.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn one_process_serves_commands_projections_and_queries(pool: PgPool) {
    let (_, token) = TokenStore::new(pool.clone())
        .create(&NewToken {
            tenant: "acme".into(),
            actor: "billing-service".into(),
            actor_type: "service".into(),
            role: Role::Service,
            description: "all-in-one test".into(),
            expires_at: None,
        })
        .await
        .unwrap();

    // A checkpoint key, made by the binary's own verb (no database needed).
    let dir = std::env::temp_dir().join(format!("annals-all-in-one-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, checkpoints) = (dir.join("checkpoint.key"), dir.join("checkpoints.jsonl"));
    let keygen = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["audit", "keygen", "--out", key.to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(keygen.success());

    let mut child = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["--database-url", &service_database_url(&pool).await, "run"])
        .args(["--checkpoint-key-file", key.to_str().unwrap()])
        .args(["--checkpoint-file", checkpoints.to_str().unwrap()])
        .args([
            "--command-listen",
            "127.0.0.1:0",
            "--query-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        // The embedded default: whatever broker the test environment has must not switch
        // this process to Kafka mode.
        .env_remove("KAFKA_BOOTSTRAP")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("annals printed its addresses");
    let addr = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .map(|a| format!("http://{a}"))
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
    };

    let mut commands = pb::task_commands_client::TaskCommandsClient::connect(addr("command"))
        .await
        .unwrap();
    let task_id = Uuid::now_v7().to_string();
    let due = chrono::Utc::now() + chrono::Duration::days(3);
    let created = commands
        .create_task(authorized(
            pb::CreateTaskRequest {
                envelope: Some(pb::CommandEnvelope {
                    command_id: Uuid::now_v7().to_string(),
                    ..Default::default()
                }),
                task_id: task_id.clone(),
                title: "Close the books".into(),
                due_date: Some(prost_types::Timestamp {
                    seconds: due.timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();

    let mut queries = pb::task_queries_client::TaskQueriesClient::connect(addr("query"))
        .await
        .unwrap();
    let got = queries
        .get_task(authorized(
            pb::GetTaskRequest {
                min_position: created.global_position,
                task_id: task_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.position >= created.global_position,
        "the answer reflects the command"
    );
    let task = got.task.unwrap();
    assert_eq!(
        (task.task_id.as_str(), task.title.as_str()),
        (task_id.as_str(), "Close the books")
    );

    let term = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // Bounded wait for the exit; polling keeps the child in the guard for cleanup.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "annals stopped within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");

    // The sealer signed at its clean stop; the auditor's verb verifies the store against the
    // file's last checkpoint with the public key.
    let lines = std::fs::read_to_string(&checkpoints).unwrap();
    assert!(lines.lines().count() >= 1, "a checkpoint was written");
    let verify = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args([
            "--database-url",
            &test_database_url(&pool),
            "audit",
            "verify",
        ])
        .args(["--public-key", &format!("{}.pub", key.display())])
        .args(["--checkpoint-file", checkpoints.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        verify.success(),
        "the store verifies against the signed checkpoint"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A service process refuses to run as the tables' owner (it could rewrite history) and says
/// what to do instead; it exits without serving anything.
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_binary_refuses_an_owner_login(pool: PgPool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["--database-url", &test_database_url(&pool), "run"])
        .args([
            "--command-listen",
            "127.0.0.1:0",
            "--query-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .env_remove("KAFKA_BOOTSTRAP")
        .env_remove("ANNALS_ALLOW_OWNER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("annals kept running as the owner for 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("annals_service") && stderr.contains("--allow-owner"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing served: {:?}", out.stdout);
}
