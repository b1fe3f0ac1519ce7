//! The one home of the fold loop: load an [`Aggregate`] from its stream, execute a command on it.
//!
//! - [`load`] / [`load_until`] read a tenant's stream forward page by page, upcast each event
//!   through [`DomainEvent::from_stored`] and fold it with [`Aggregate::evolve`]. Stream ids are
//!   scoped to the tenant, so another tenant's stream of the same id is simply not there; a
//!   stream of the tenant holding another aggregate type loads as `None`.
//! - [`execute`] is load, decide, append with the right expected version, costing as few round
//!   trips as the command allows:
//!
//! | command | round trips |
//! |---|---|
//! | create (empty state, no client version) | 1: append with `NoStream` |
//! | on an existing aggregate | 2: load, append with `Exact(loaded)` |
//! | refused (domain, client version, other aggregate type), or nothing to append | +1: the command log |
//! | create whose stream exists, or refused on the empty state | +1: load, then decided on what is there |
//!
//! Retries ride on the append: the store answers a known command id (same fingerprint: the
//! stored result with `replayed = true`; another one: [`StoreError::CommandIdReused`]) before it
//! checks expected versions. Only a refusal, which never reaches the append, looks at the
//! command log, so that a retry whose first attempt succeeded keeps getting the first answer
//! even when deciding again would now be refused (the task is completed since, a create's
//! aggregate exists since).
//!
//! Results keep "the aggregate refused" apart from "the store failed", like esrs:
//! `Result<Result<Executed, Refusal>, StoreError>`.

use aggregates::{Aggregate, CommandContext, DomainError, DomainEvent};
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::store::EventStore;
use crate::types::{
    AppendBatch, AppendResult, Direction, ExpectedVersion, NewEvent, RecordedEvent, StreamId,
};

/// Events read per round trip while loading a stream. Streams are tens of events long, so one
/// page nearly always holds the whole stream.
const LOAD_PAGE: u32 = 1_000;

/// A stream folded into its aggregate's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<S> {
    /// The state after the last folded event (`Default` for an empty stream).
    pub state: S,
    /// Version of the last folded event; 0 when none.
    pub version: u64,
    /// When the last folded event was recorded; `None` when none.
    pub recorded_at: Option<DateTime<Utc>>,
}

impl<S: Default> Default for Loaded<S> {
    fn default() -> Self {
        Self {
            state: S::default(),
            version: 0,
            recorded_at: None,
        }
    }
}

/// Folds one stored event of `A` onto `loaded`: upcast, evolve, advance the version.
pub fn fold<A: Aggregate>(
    loaded: Loaded<A::State>,
    event: &RecordedEvent,
) -> Result<Loaded<A::State>, StoreError> {
    let corrupt = |reason: String| {
        StoreError::Corrupt(format!(
            "stream {} version {} ({}): {reason}",
            event.stream_id, event.stream_version, event.event_id
        ))
    };
    let payload = event.payload_json().map_err(|e| corrupt(e.to_string()))?;
    let domain = A::Event::from_stored(&event.event_type, event.schema_version, payload)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Loaded {
        state: A::evolve(loaded.state, &domain),
        version: event.stream_version,
        recorded_at: Some(event.recorded_at),
    })
}

/// Loads `A`'s whole stream of `tenant`; `None` when the tenant's stream holds another aggregate
/// type. A stream the tenant does not have (whatever other tenants have) loads as the empty
/// state at version 0.
pub async fn load<A: Aggregate>(
    store: &EventStore,
    tenant: &str,
    stream: &StreamId,
) -> Result<Option<Loaded<A::State>>, StoreError> {
    load_until::<A>(store, tenant, stream, |_| true).await
}

/// Like [`load`], stopping before the first event `include` refuses (e.g. state as of a version
/// or an instant; events are visited in stream order).
#[tracing::instrument(name = "event_store.load", skip_all, fields(%stream, stream_type = A::STREAM_TYPE))]
pub async fn load_until<A: Aggregate>(
    store: &EventStore,
    tenant: &str,
    stream: &StreamId,
    mut include: impl FnMut(&RecordedEvent) -> bool,
) -> Result<Option<Loaded<A::State>>, StoreError> {
    let mut loaded = Loaded::default();
    loop {
        let page = store
            .read_stream(
                tenant,
                stream,
                loaded.version + 1,
                Direction::Forward,
                LOAD_PAGE,
            )
            .await?;
        let last_page = page.len() < LOAD_PAGE as usize;
        for event in &page {
            if event.stream_type != A::STREAM_TYPE {
                return Ok(None);
            }
            if !include(event) {
                return Ok(Some(loaded));
            }
            loaded = fold::<A>(loaded, event)?;
        }
        if last_page {
            return Ok(Some(loaded));
        }
    }
}

/// The expected version that appends after `version` (0: the stream must not exist yet).
pub fn expected_after(version: u64) -> ExpectedVersion {
    if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(version)
    }
}

/// The events of a decision as the store takes them.
pub fn new_events<E: DomainEvent>(events: &[E]) -> Vec<NewEvent> {
    events
        .iter()
        .map(|e| NewEvent::new(e.event_type(), e.schema_version(), e.to_payload()))
        .collect()
}

/// What a command expects of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Creates the aggregate: its stream must not exist.
    Create,
    /// Acts on an aggregate that exists (deciding on the empty state refuses otherwise).
    Existing,
}

/// One command for [`execute`].
#[derive(Debug)]
pub struct Execution<'a, A: Aggregate> {
    /// The aggregate's stream.
    pub stream: &'a StreamId,
    /// Create or act on an existing aggregate.
    pub target: Target,
    /// The version the caller based its command on, if it said (0: the stream must not exist).
    pub expected: Option<u64>,
    /// The command.
    pub command: A::Command,
    /// Time and actor of the decision.
    pub context: CommandContext,
    /// Metadata and idempotency of the append; the stream's events are added to it. With a
    /// command id it is also what a refusal looks up in the command log.
    pub batch: AppendBatch,
}

/// What an accepted (or retried) command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// The stream's version before this command (0 for a create, or for a retry answered from
    /// the command log).
    pub version_before: u64,
    /// The append; `None` when the decision produced no events.
    pub appended: Option<AppendResult>,
}

/// Why [`execute`] wrote nothing (none of these is a store failure).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The aggregate's rules refused the command.
    Domain(DomainError),
    /// The tenant's stream exists but holds another aggregate type: answer as "not found" (or
    /// "already exists" for a create).
    OtherType,
    /// The caller based its command on another version than the current one.
    VersionMismatch {
        /// What the caller expected (0: no stream).
        expected: u64,
        /// The current version, `None` when the stream does not exist.
        actual: Option<u64>,
    },
}

/// Executes a command on aggregate `A` (see the module docs for the round trips).
///
/// A version conflict of the append itself (a concurrent writer) is returned as
/// [`StoreError::WrongExpectedVersion`]; retrying with a fresh load is the caller's choice.
#[tracing::instrument(name = "event_store.execute", skip_all, fields(
    stream = %execution.stream,
    stream_type = A::STREAM_TYPE,
    target = ?execution.target,
))]
pub async fn execute<A>(
    store: &EventStore,
    execution: Execution<'_, A>,
) -> Result<Result<Executed, Refusal>, StoreError>
where
    A: Aggregate,
    // A create is decided before anything is read; should its id turn out to exist, the
    // command is decided again on what is there.
    A::Command: Clone,
{
    let Execution {
        stream,
        target,
        expected,
        command,
        context,
        batch,
    } = execution;
    let fresh_create = target == Target::Create && expected.unwrap_or(0) == 0;
    let command = if fresh_create {
        // A new id has no history to load: decide on the empty state and let `NoStream` tell
        // whether the id was new after all. Anything but a plain accept (a refusal, no events)
        // takes the full path below, so that it is answered exactly as on a loaded stream: an
        // invalid create of an existing id is "already exists", not the invalid field.
        match A::decide(&A::State::default(), command.clone(), &context) {
            Ok(events) if !events.is_empty() => {
                let create = batch.clone().stream(
                    stream.clone(),
                    A::STREAM_TYPE,
                    ExpectedVersion::NoStream,
                    new_events(&events),
                );
                match store.append(create).await {
                    Ok(appended) => {
                        return Ok(Ok(Executed {
                            version_before: 0,
                            appended: Some(appended),
                        }));
                    }
                    // The tenant's stream exists (of this type or another): decide again on
                    // what is there, as any command would.
                    Err(
                        StoreError::WrongExpectedVersion { .. }
                        | StoreError::StreamTypeMismatch { .. },
                    ) => command,
                    Err(other) => return Err(other),
                }
            }
            _ => command,
        }
    } else {
        command
    };

    let Some(loaded) = load::<A>(store, &batch.metadata.tenant, stream).await? else {
        return refused(store, &batch, Refusal::OtherType).await;
    };
    if let Some(expected) = expected
        && expected != loaded.version
    {
        let mismatch = Refusal::VersionMismatch {
            expected,
            actual: (loaded.version > 0).then_some(loaded.version),
        };
        return refused(store, &batch, mismatch).await;
    }
    let events = match A::decide(&loaded.state, command, &context) {
        Ok(events) => events,
        Err(error) => return refused(store, &batch, Refusal::Domain(error)).await,
    };
    if events.is_empty() {
        // Nothing to append means nothing for the store to answer a retry with: a command id
        // that already appended gets its first answer from the log.
        if let Some(appended) = earlier_result(store, &batch).await? {
            return Ok(Ok(Executed {
                version_before: 0,
                appended: Some(appended),
            }));
        }
        return Ok(Ok(Executed {
            version_before: loaded.version,
            appended: None,
        }));
    }
    let batch = batch.stream(
        stream.clone(),
        A::STREAM_TYPE,
        expected_after(loaded.version),
        new_events(&events),
    );
    let appended = store.append(batch).await?;
    Ok(Ok(Executed {
        version_before: loaded.version,
        appended: Some(appended),
    }))
}

/// The answer to a refused command: the stored result when its command id already succeeded
/// (see [`earlier_result`]), the refusal otherwise.
pub async fn refused(
    store: &EventStore,
    batch: &AppendBatch,
    refusal: Refusal,
) -> Result<Result<Executed, Refusal>, StoreError> {
    Ok(match earlier_result(store, batch).await? {
        Some(appended) => Ok(Executed {
            version_before: 0,
            appended: Some(appended),
        }),
        None => Err(refusal),
    })
}

/// The stored result of `batch`'s command id (`replayed = true`), when that command already
/// succeeded: what a refused retry answers. A different request under the id is
/// [`StoreError::CommandIdReused`]. Without a caller fingerprint (see
/// [`AppendBatch::idempotent_with_fingerprint`]) the requests cannot be compared here, and a
/// logged result is taken as the answer. One round trip; none without a command id.
pub async fn earlier_result(
    store: &EventStore,
    batch: &AppendBatch,
) -> Result<Option<AppendResult>, StoreError> {
    let Some(command_id) = batch.command_id else {
        return Ok(None);
    };
    match batch.fingerprint {
        Some(fingerprint) => {
            store
                .command_result_matching(&batch.metadata.tenant, command_id, fingerprint)
                .await
        }
        None => {
            store
                .command_result(&batch.metadata.tenant, command_id)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use aggregates::task::{CreateTask, Tags, Task, TaskCommand};
    use aggregates::values::{TaskId, TaskTitle, UserRef};
    use chrono::TimeZone;
    use sqlx::PgPool;
    use uuid::Uuid;

    use super::*;
    use crate::types::Metadata;

    fn create(id: Uuid) -> TaskCommand {
        TaskCommand::CreateTask(CreateTask {
            task_id: TaskId::new(id).unwrap(),
            owner: UserRef::parse("ann").unwrap(),
            title: TaskTitle::parse(format!("task {id}")).unwrap(),
            description: None,
            due_date: None,
            priority: None,
            tags: Tags::new(Vec::new()).unwrap(),
            reminder_config: None,
            recurrence: None,
            parent_task_id: None,
            occurrence: 1,
        })
    }

    fn complete(id: Uuid) -> TaskCommand {
        TaskCommand::CompleteTask {
            task_id: TaskId::new(id).unwrap(),
        }
    }

    /// Runs `command` as `tenant` under `command_id`, fingerprinted by `request`.
    async fn run(
        store: &EventStore,
        tenant: &str,
        stream: &StreamId,
        target: Target,
        command: TaskCommand,
        (command_id, request): (Uuid, u8),
    ) -> Result<Executed, Refusal> {
        let now = Utc.with_ymd_and_hms(2030, 1, 1, 9, 0, 0).unwrap();
        let batch = AppendBatch::new(Metadata::new(tenant, "ann", "user"))
            .idempotent_with_fingerprint(command_id, [request; 32]);
        let execution = Execution::<Task> {
            stream,
            target,
            expected: None,
            command,
            context: CommandContext::new(now, "ann"),
            batch,
        };
        execute::<Task>(store, execution).await.unwrap()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn every_path_of_execute_answers_like_the_rules(pool: PgPool) {
        let store = EventStore::new(pool);
        let id = Uuid::now_v7();
        let stream = StreamId::new(id.to_string()).unwrap();
        let (first, second, third) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());

        // A create appends at once; its retry is answered by the append itself.
        let created = run(
            &store,
            "acme",
            &stream,
            Target::Create,
            create(id),
            (first, 1),
        )
        .await
        .unwrap();
        let appended = created.appended.clone().unwrap();
        assert!(!appended.replayed);
        assert_eq!(appended.streams[0].version, 1);
        let retried = run(
            &store,
            "acme",
            &stream,
            Target::Create,
            create(id),
            (first, 1),
        )
        .await
        .unwrap();
        assert!(retried.appended.unwrap().replayed);

        // A new create on the existing stream is refused by the rules, not by the store.
        let again = run(
            &store,
            "acme",
            &stream,
            Target::Create,
            create(id),
            (second, 2),
        )
        .await;
        assert!(matches!(again, Err(Refusal::Domain(e)) if e.code() == "task.already_exists"));
        // Even when the empty state would refuse it too (here: a due date in the past).
        let mut late = create(id);
        if let TaskCommand::CreateTask(c) = &mut late {
            c.due_date = Some(Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap());
        }
        let invalid = run(&store, "acme", &stream, Target::Create, late, (third, 5)).await;
        assert!(matches!(invalid, Err(Refusal::Domain(e)) if e.code() == "task.already_exists"));
        // Ids are scoped to the tenant: the same id is free in another tenant, which creates its
        // own task at version 1 (nothing about acme's task shows).
        let other = run(
            &store,
            "globex",
            &stream,
            Target::Create,
            create(id),
            (third, 3),
        )
        .await
        .unwrap();
        let other = other.appended.unwrap();
        assert!(!other.replayed);
        assert_eq!(other.streams[0].version, 1);

        // A command on the aggregate: load + append at the loaded version.
        let done = run(
            &store,
            "acme",
            &stream,
            Target::Existing,
            complete(id),
            (second, 4),
        )
        .await
        .unwrap();
        assert_eq!(done.version_before, 1);
        assert_eq!(done.appended.unwrap().streams[0].version, 2);
        // Its retry would now be refused by the rules (completed already): the log answers.
        let replay = run(
            &store,
            "acme",
            &stream,
            Target::Existing,
            complete(id),
            (second, 4),
        )
        .await
        .unwrap();
        assert!(replay.appended.unwrap().replayed);
        // The same id for another request is refused by the store.
        let now = Utc.with_ymd_and_hms(2030, 1, 1, 9, 0, 0).unwrap();
        let reused = execute::<Task>(
            &store,
            Execution::<Task> {
                stream: &stream,
                target: Target::Existing,
                expected: None,
                command: complete(id),
                context: CommandContext::new(now, "ann"),
                batch: AppendBatch::new(Metadata::new("acme", "ann", "user"))
                    .idempotent_with_fingerprint(second, [9; 32]),
            },
        )
        .await;
        assert!(matches!(reused, Err(StoreError::CommandIdReused { .. })));

        let loaded = load::<Task>(&store, "acme", &stream)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded.version, 2);
        let first_only = load_until::<Task>(&store, "acme", &stream, |e| e.stream_version < 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first_only.version, 1);
        assert_ne!(first_only.state, loaded.state);
        let theirs = load::<Task>(&store, "globex", &stream)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(theirs.version, 1);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_client_version_is_checked_before_deciding(pool: PgPool) {
        let store = EventStore::new(pool);
        let id = Uuid::now_v7();
        let stream = StreamId::new(id.to_string()).unwrap();
        run(
            &store,
            "acme",
            &stream,
            Target::Create,
            create(id),
            (Uuid::now_v7(), 1),
        )
        .await
        .unwrap();
        let now = Utc.with_ymd_and_hms(2030, 1, 1, 9, 0, 0).unwrap();
        let stale = execute::<Task>(
            &store,
            Execution::<Task> {
                stream: &stream,
                target: Target::Existing,
                expected: Some(3),
                command: complete(id),
                context: CommandContext::new(now, "ann"),
                batch: AppendBatch::new(Metadata::new("acme", "ann", "user"))
                    .idempotent_with_fingerprint(Uuid::now_v7(), [2; 32]),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            stale,
            Err(Refusal::VersionMismatch {
                expected: 3,
                actual: Some(1)
            })
        );
    }
}
