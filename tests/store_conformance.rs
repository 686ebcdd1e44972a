//! One conformance suite, run against both stores: SQLite always, PostgreSQL when
//! `JANITOR_TEST_POSTGRES_URL` is set (each test in a fresh database). Each test is an invariant
//! the queue promises.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::TestDb;
use ecs_janitor::store::{
    BatchMember, BatchState, MemberOutcome, NewRelease, ReleaseFilter, ReleaseId, RunEnd,
    RunStatus, Store, StoreError,
};

/// What an unfiltered listing shows: `ids` Stopped, nothing else listed.
fn listed_stopped(ids: &[String]) -> ecs_janitor::store::Seen {
    ecs_janitor::store::Seen {
        stopped: ids.to_vec(),
        sees_stopped: true,
        ..Default::default()
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn rel(id: &str, region: &str, force: bool) -> NewRelease {
    NewRelease {
        instance_id: id.into(),
        instance_name: format!("n-{id}"),
        account: String::new(),
        region: region.into(),
        policy: "p".into(),
        force,
        terminate_subscription: false,
        not_before: t0(),
        reasons: "because".into(),
        snapshot: None,
        saving: None,
    }
}

const LEASE: Duration = Duration::from_secs(30);

/// Generates `$name::sqlite` and `$name::postgres` from one async body taking a `TestDb`.
macro_rules! conformance {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let db = common::sqlite().await;
                ($body)(db).await;
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(db) = common::postgres().await {
                    ($body)(db).await;
                }
            }
        }
    };
}

async fn state_of(s: &Store, instance: &str) -> Vec<String> {
    s.list_releases(&ReleaseFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.instance_id == instance)
        .map(|r| r.state.to_string())
        .collect()
}

conformance!(one_active_release_per_instance, |db: TestDb| async move {
    let s = &db.store;
    let a = s
        .enqueue(&[rel("i-1", "r1", false), rel("i-1", "r1", false)], t0())
        .await
        .unwrap();
    assert_eq!(a.len(), 1, "the same instance is queued once");
    let b = s.enqueue(&[rel("i-1", "r1", true)], t0()).await.unwrap();
    assert!(b.is_empty(), "an active release blocks another");
    // Once it has ended, the instance may be queued again.
    assert_eq!(
        s.cancel_pending(&[(a[0].0, "test".into())], t0())
            .await
            .unwrap(),
        vec![a[0].0]
    );
    let c = s.enqueue(&[rel("i-1", "r1", false)], t0()).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(state_of(s, "i-1").await, ["pending", "cancelled"]);
});

conformance!(
    batches_hold_at_most_100_of_one_region_and_flag_set,
    |db: TestDb| async move {
        let s = &db.store;
        let mut rs = Vec::new();
        for n in 0..250 {
            rs.push(rel(&format!("i-a{n}"), "r1", false));
        }
        for n in 0..30 {
            rs.push(rel(&format!("i-b{n}"), "r2", false));
        }
        for n in 0..20 {
            rs.push(rel(&format!("i-c{n}"), "r1", true));
        }
        s.enqueue(&rs, t0()).await.unwrap();
        let mut seen = HashSet::new();
        let mut tokens = HashSet::new();
        let mut sizes = Vec::new();
        while let Some(b) = s.claim("w", t0(), LEASE, 100, None).await.unwrap() {
            assert!(b.members.len() <= 100);
            assert!(tokens.insert(b.client_token.clone()), "tokens are unique");
            assert!(b.client_token.len() <= 64 && b.client_token.is_ascii());
            for m in &b.members {
                assert!(
                    seen.insert(m.instance_id.clone()),
                    "{} in two batches",
                    m.instance_id
                );
                let want_region = if m.instance_id.starts_with("i-b") {
                    "r2"
                } else {
                    "r1"
                };
                assert_eq!(b.region, want_region);
                assert_eq!(
                    b.force,
                    m.instance_id.starts_with("i-c"),
                    "one set of flags"
                );
            }
            sizes.push(b.members.len());
            // Finish it so the next claim forms a new batch rather than waiting.
            let done: Vec<_> = b.members.iter().map(|m| (m.clone(), ok())).collect();
            assert!(s
                .finish_batch(&b.fence, BatchState::Done, None, &done, &[], t0())
                .await
                .unwrap());
        }
        assert_eq!(seen.len(), 300);
        sizes.sort();
        assert_eq!(sizes, [20, 30, 50, 100, 100]);
    }
);

fn ok() -> MemberOutcome {
    MemberOutcome::Succeeded {
        request_id: Some("RID".into()),
        code: None,
        detail: "released".into(),
    }
}

conformance!(
    a_throttled_answer_gives_its_try_back_in_the_batchs_first_hour,
    |db: TestDb| async move {
        // Found trying a tight quota: every throttled answer used up a try, so batches waiting
        // on the quota failed with Throttling.User, which the README says is only retried.
        use ecs_janitor::store::{RetryHow, THROTTLED_FREE_FOR};
        let s = &db.store;
        s.enqueue(&[rel("i-1", "r1", false)], t0()).await.unwrap();
        let mut now = t0();
        let throttled = RetryHow {
            throttled: true,
            ..RetryHow::default()
        };
        let mut tries = Vec::new();
        for how in [throttled, throttled, RetryHow::default(), throttled] {
            let b = s.claim("w", now, LEASE, 100, None).await.unwrap().unwrap();
            assert!(s
                .begin_attempt(&b.fence, &[], &b.client_token, now)
                .await
                .unwrap());
            let code = if how.throttled {
                "Throttling.User"
            } else {
                "InternalError"
            };
            now += chrono::Duration::seconds(61);
            assert!(s
                .retry_later_as(&b.fence, code, "no", now, how, now)
                .await
                .unwrap());
            tries.push(s.claim("w", now, LEASE, 100, None).await.unwrap().unwrap());
            let last = tries.last().unwrap();
            s.retry_later(&last.fence, code, "again", now, false, now)
                .await
                .unwrap();
        }
        let counts: Vec<(i64, i64)> = tries.iter().map(|b| (b.attempts, b.tries)).collect();
        // Four calls; only the InternalError one uses up a try.
        assert_eq!(counts, vec![(1, 0), (2, 0), (3, 1), (4, 1)]);
        // Past its first hour, throttling counts as any other retry.
        now = t0() + THROTTLED_FREE_FOR + chrono::Duration::seconds(1);
        let b = s.claim("w", now, LEASE, 100, None).await.unwrap().unwrap();
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, now)
            .await
            .unwrap());
        assert!(s
            .retry_later_as(&b.fence, "Throttling.User", "no", now, throttled, now)
            .await
            .unwrap());
        let b = s.claim("w", now, LEASE, 100, None).await.unwrap().unwrap();
        assert_eq!((b.attempts, b.tries), (5, 2));
    }
);

conformance!(
    a_retried_batch_keeps_its_token_and_members,
    |db: TestDb| async move {
        let s = &db.store;
        s.enqueue(&[rel("i-1", "r1", false), rel("i-2", "r1", false)], t0())
            .await
            .unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        assert_eq!(b.attempts, 0);
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, t0())
            .await
            .unwrap());
        let later = t0() + chrono::Duration::seconds(5);
        assert!(s
            .retry_later(&b.fence, "InternalError", "boom", later, false, t0())
            .await
            .unwrap());
        // Not due before its next attempt, and nothing new to batch.
        assert!(s
            .claim("w", t0() + chrono::Duration::seconds(1), LEASE, 100, None)
            .await
            .unwrap()
            .is_none());
        assert_eq!(s.next_due(t0(), None).await.unwrap(), Some(later));
        let again = s
            .claim("w2", later, LEASE, 100, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.client_token, b.client_token);
        assert_eq!(again.members, b.members);
        assert_eq!(again.attempts, 1);
        let r = s.list_releases(&ReleaseFilter::default()).await.unwrap();
        assert!(r
            .iter()
            .all(|r| r.client_token.as_deref() == Some(b.client_token.as_str())));
        assert!(r
            .iter()
            .all(|r| r.last_code.as_deref() == Some("InternalError")));
    }
);

conformance!(
    an_expired_lease_is_taken_over_and_the_old_owner_is_fenced,
    |db: TestDb| async move {
        let s = &db.store;
        s.enqueue(&[rel("i-1", "r1", false)], t0()).await.unwrap();
        let a = s
            .claim("worker-a", t0(), LEASE, 100, None)
            .await
            .unwrap()
            .unwrap();
        assert!(
            s.claim("worker-b", t0(), LEASE, 100, None)
                .await
                .unwrap()
                .is_none(),
            "leased"
        );
        let after = t0() + chrono::Duration::seconds(31);
        let b = s
            .claim("worker-b", after, LEASE, 100, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            a.client_token, b.client_token,
            "the same batch, the same token"
        );
        assert!(!s.renew_lease(&a.fence, after, LEASE).await.unwrap());
        assert!(!s
            .begin_attempt(&a.fence, &[], &a.client_token, after)
            .await
            .unwrap());
        let done: Vec<_> = a.members.iter().map(|m| (m.clone(), ok())).collect();
        assert!(!s
            .finish_batch(&a.fence, BatchState::Done, None, &done, &[], after)
            .await
            .unwrap());
        assert_eq!(
            state_of(s, "i-1").await,
            ["in_flight"],
            "the stale owner changed nothing"
        );
        assert!(s.renew_lease(&b.fence, after, LEASE).await.unwrap());
        assert!(s
            .finish_batch(&b.fence, BatchState::Done, None, &done, &[], after)
            .await
            .unwrap());
        assert_eq!(state_of(s, "i-1").await, ["succeeded"]);
    }
);

conformance!(
    a_lease_is_held_by_one_owner_until_given_back_or_run_out,
    |db: TestDb| async move {
        let s = &db.store;
        let secs = chrono::Duration::seconds;
        assert!(s
            .take_lease("marks", "a", t0() + secs(30), t0())
            .await
            .unwrap());
        assert!(
            !s.take_lease("marks", "b", t0() + secs(30), t0() + secs(1))
                .await
                .unwrap(),
            "held by a"
        );
        assert!(
            s.take_lease("other", "b", t0() + secs(30), t0())
                .await
                .unwrap(),
            "each name its own lease"
        );
        assert!(
            s.take_lease("marks", "a", t0() + secs(40), t0() + secs(10))
                .await
                .unwrap(),
            "its holder renews it"
        );
        // Only its holder gives it back.
        s.end_lease("marks", "b").await.unwrap();
        assert!(!s
            .take_lease("marks", "b", t0() + secs(60), t0() + secs(39))
            .await
            .unwrap());
        // Run out: anyone takes it.
        assert!(s
            .take_lease("marks", "b", t0() + secs(70), t0() + secs(40))
            .await
            .unwrap());
        s.end_lease("marks", "b").await.unwrap();
        assert!(s
            .take_lease("marks", "c", t0() + secs(70), t0() + secs(41))
            .await
            .unwrap());
    }
);

conformance!(each_policy_tick_runs_once, |db: TestDb| async move {
    let s = &db.store;
    assert!(s
        .begin_run("p", t0(), "a", t0(), chrono::Duration::seconds(30))
        .await
        .unwrap());
    assert!(!s
        .begin_run("p", t0(), "b", t0(), chrono::Duration::seconds(30))
        .await
        .unwrap());
    assert!(s
        .begin_run("q", t0(), "b", t0(), chrono::Duration::seconds(30))
        .await
        .unwrap());
    s.finish_run(
        &RunEnd {
            policy: "p",
            scheduled_for: t0(),
            outcome: RunStatus::Ok,
            planned: 3,
            enqueued: 2,
            cancelled: 1,
            refused: 0,
        },
        t0(),
    )
    .await
    .unwrap();
    let runs = s.runs(10).await.unwrap();
    let p = runs.iter().find(|r| r.policy == "p").unwrap();
    assert_eq!(
        (p.owner.as_str(), p.planned, p.enqueued, p.cancelled),
        ("a", 3, 2, 1)
    );
});

conformance!(
    a_split_regroups_members_under_new_tokens,
    |db: TestDb| async move {
        let s = &db.store;
        let rs: Vec<_> = (0..4)
            .map(|n| rel(&format!("i-{n}"), "r1", false))
            .collect();
        s.enqueue(&rs, t0()).await.unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, t0())
            .await
            .unwrap());
        let ids: Vec<ReleaseId> = b.members.iter().map(|m| m.release_id).collect();
        let groups = vec![ids[..2].to_vec(), ids[2..].to_vec()];
        assert!(s
            .finish_batch(
                &b.fence,
                BatchState::Split,
                Some("InvalidOperation.DeletionProtection"),
                &[],
                &groups,
                t0()
            )
            .await
            .unwrap());
        let x = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let y = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let tokens: HashSet<_> = [&b.client_token, &x.client_token, &y.client_token]
            .into_iter()
            .collect();
        assert_eq!(tokens.len(), 3, "each half has a new token");
        assert_eq!(x.members.len() + y.members.len(), 4);
        assert_eq!((x.attempts, y.attempts), (0, 0));
    }
);

conformance!(
    grace_holds_a_release_until_not_before,
    |db: TestDb| async move {
        let s = &db.store;
        let mut r = rel("i-1", "r1", false);
        r.not_before = t0() + chrono::Duration::hours(2);
        s.enqueue(&[r], t0()).await.unwrap();
        assert!(s
            .claim("w", t0(), LEASE, 100, None)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            s.next_due(t0(), None).await.unwrap(),
            None,
            "grace is not work for a drain"
        );
        assert!(s
            .claim("w", t0() + chrono::Duration::hours(2), LEASE, 100, None)
            .await
            .unwrap()
            .is_some());
    }
);

conformance!(
    settling_members_and_operator_actions,
    |db: TestDb| async move {
        let s = &db.store;
        let rs: Vec<_> = (0..3)
            .map(|n| rel(&format!("i-{n}"), "r1", false))
            .collect();
        s.enqueue(&rs, t0()).await.unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let m: Vec<BatchMember> = b.members.clone();
        // The re-check cancels one before the call.
        let pre = vec![(
            m[0].clone(),
            MemberOutcome::Cancelled {
                reason: "now protected".into(),
            },
        )];
        assert!(s
            .begin_attempt(&b.fence, &pre, &b.client_token, t0())
            .await
            .unwrap());
        let end = vec![
            (m[1].clone(), ok()),
            (
                m[2].clone(),
                MemberOutcome::Failed {
                    code: "ChargeTypeViolation".into(),
                    message: "no".into(),
                    request_id: Some("R2".into()),
                    quarantine: None,
                },
            ),
        ];
        assert!(s
            .finish_batch(
                &b.fence,
                BatchState::Failed,
                Some("ChargeTypeViolation"),
                &end,
                &[],
                t0()
            )
            .await
            .unwrap());
        let c = s.counts().await.unwrap();
        assert_eq!(
            (c.cancelled, c.succeeded, c.failed, c.pending, c.in_flight),
            (1, 1, 1, 0, 0)
        );
        let failed = s
            .list_releases(&ReleaseFilter {
                state: Some("failed".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(failed[0].last_code.as_deref(), Some("ChargeTypeViolation"));
        assert_eq!(failed[0].request_id.as_deref(), Some("R2"));
        // An operator retries the failed one; it is pending and due again.
        s.retry_release(failed[0].id, "test", "", t0())
            .await
            .unwrap();
        assert_eq!(state_of(s, "i-2").await, ["pending"]);
        // Succeeded releases cannot be retried; in-flight ones cannot be cancelled.
        let done = s
            .list_releases(&ReleaseFilter {
                state: Some("succeeded".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(matches!(
            s.retry_release(done[0].id, "test", "", t0()).await,
            Err(StoreError::WrongState { .. })
        ));
        let b2 = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        assert!(matches!(
            s.cancel_release(b2.members[0].release_id, "test", "x", None, t0())
                .await,
            Err(StoreError::WrongState { .. })
        ));
        assert!(matches!(
            s.retry_release(ReleaseId(9999), "test", "", t0()).await,
            Err(StoreError::NoSuchRelease(ReleaseId(9999)))
        ));
        // The audit log tells the story.
        let kinds: Vec<String> = s
            .events(100)
            .await
            .unwrap()
            .into_iter()
            .rev()
            .map(|e| e.kind)
            .collect();
        for k in [
            "enqueued",
            "batched",
            "cancelled",
            "call_sent",
            "succeeded",
            "failed",
            "retried",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
        }
        let sent = s
            .events(100)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.kind == "call_sent")
            .unwrap();
        assert_eq!(sent.client_token.as_deref(), Some(b.client_token.as_str()));
        let batched = s
            .events(100)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.kind == "batched" && e.batch_id == Some(b.fence.batch_id))
            .unwrap();
        assert_eq!(
            (batched.client_token.as_deref(), batched.detail.as_str()),
            (Some(b.client_token.as_str()), "3 releases in r1")
        );
    }
);

conformance!(
    observations_start_once_and_clear_when_not_stopped,
    |db: TestDb| async move {
        let s = &db.store;
        s.observe(
            "",
            "r1",
            &listed_stopped(&["i-1".into(), "i-2".into()]),
            t0(),
        )
        .await
        .unwrap();
        s.observe("prod", "r1", &listed_stopped(&["i-7".into()]), t0())
            .await
            .unwrap();
        let later = t0() + chrono::Duration::hours(1);
        s.observe("", "r1", &listed_stopped(&["i-1".into()]), later)
            .await
            .unwrap();
        s.observe("", "r2", &listed_stopped(&["i-9".into()]), later)
            .await
            .unwrap();
        let o = s.observations().await.unwrap();
        assert_eq!(o.get("i-1"), Some(&t0()), "the first sighting is kept");
        assert!(!o.contains_key("i-2"), "no longer stopped: cleared");
        assert_eq!(o.get("i-9"), Some(&later));
        assert_eq!(
            o.get("i-7"),
            Some(&t0()),
            "another account's listing of the same region clears nothing of this one"
        );
        let some = s
            .observations_of(&["i-1".into(), "i-9".into(), "i-404".into()])
            .await
            .unwrap();
        assert_eq!(
            some.len(),
            2,
            "only the instances asked for, and only those seen"
        );
        assert_eq!(some.get("i-1"), Some(&t0()));
        s.observe("prod", "r1", &listed_stopped(&[]), later)
            .await
            .unwrap();
        assert!(!s.observations().await.unwrap().contains_key("i-7"));
    }
);

conformance!(
    concurrent_claims_never_share_a_release,
    |db: TestDb| async move {
        let s = db.store.clone();
        let rs: Vec<_> = (0..600)
            .map(|n| rel(&format!("i-{n}"), ["r1", "r2", "r3"][n % 3], n % 2 == 0))
            .collect();
        s.enqueue(&rs, t0()).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(b) = s
                    .claim(&format!("w{w}"), t0(), LEASE, 50, None)
                    .await
                    .unwrap()
                {
                    mine.extend(b.members.iter().map(|m| m.instance_id.clone()));
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let set: HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len(), "no release claimed twice");
        assert_eq!(all.len(), 600);
    }
);

conformance!(
    a_stored_batch_due_again_is_claimed_before_new_releases,
    |db: TestDb| async move {
        let s = &db.store;
        let rs: Vec<_> = ["r1", "r1", "r2", "r2"]
            .iter()
            .enumerate()
            .map(|(n, r)| rel(&format!("i-{n}"), r, false))
            .collect();
        s.enqueue(&rs, t0()).await.unwrap();
        let a = s
            .claim("w1", t0(), LEASE, 100, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.members.len(), 2);
        // Its lease expired with the other group's releases still due: the batch comes first.
        let later = t0() + lease_as_chrono() * 2;
        let again = s
            .claim("w2", later, LEASE, 100, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (again.fence.batch_id, again.client_token.as_str()),
            (a.fence.batch_id, a.client_token.as_str())
        );
        assert_eq!(again.members, a.members);
        let next = s
            .claim("w2", later, LEASE, 100, None)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(next.region, a.region);
        assert_eq!(next.members.len(), 2);
    }
);

conformance!(
    an_expired_lease_is_taken_over_by_one_claim_only,
    |db: TestDb| async move {
        let s = db.store.clone();
        let rs: Vec<_> = (0..40)
            .map(|n| rel(&format!("i-{n}"), "r1", false))
            .collect();
        s.enqueue(&rs, t0()).await.unwrap();
        let mut first = std::collections::BTreeMap::new();
        while let Some(b) = s.claim("w0", t0(), LEASE, 10, None).await.unwrap() {
            let ids: Vec<String> = b.members.iter().map(|m| m.instance_id.clone()).collect();
            first.insert(b.fence.batch_id, ids);
        }
        assert_eq!(first.len(), 4);
        // Every lease has expired: eight claimers race for the four stored batches.
        let later = t0() + lease_as_chrono() * 2;
        let mut tasks = Vec::new();
        for w in 1..=8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(b) = s
                    .claim(&format!("w{w}"), later, LEASE, 10, None)
                    .await
                    .unwrap()
                {
                    let ids: Vec<String> =
                        b.members.iter().map(|m| m.instance_id.clone()).collect();
                    mine.push((b.fence.batch_id, b.fence.claims, ids));
                }
                mine
            }));
        }
        let mut taken = Vec::new();
        for t in tasks {
            taken.extend(t.await.unwrap());
        }
        taken.sort();
        assert_eq!(
            taken.len(),
            4,
            "each stored batch taken once, no new one: {taken:?}"
        );
        for (id, claims, ids) in taken {
            assert_eq!(claims, 2, "batch {id} claimed a second time");
            assert_eq!(Some(&ids), first.get(&id), "batch {id} keeps its members");
        }
    }
);

/// The readiness probe's ping reads the schema, not just the connection: a database dropped
/// and made again under a running daemon (no tables) is not ready (found in a user trial:
/// /readyz said ready while every query failed on "relation releases does not exist").
#[tokio::test]
async fn ping_fails_once_the_schema_is_gone() {
    let db = common::sqlite().await;
    db.store.ping().await.unwrap();
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    sqlx::query("DROP TABLE settings")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(db.store.ping().await.is_err());
}

#[tokio::test]
async fn a_database_newer_than_the_binary_is_refused_clearly() {
    let db = common::sqlite().await;
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
         VALUES (9999, 'from the future', CURRENT_TIMESTAMP, 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let e = Store::connect(&db.url).await.unwrap_err().to_string();
    assert!(e.contains("9999") && e.contains("newer"), "{e}");
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let e = Store::connect("postgres://janitor:hunter2@127.0.0.1:1/janitor")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot open the database"), "{e}");
    assert!(!e.contains("hunter2"), "the password is redacted: {e}");
    let e = Store::connect("mysql://x").await.unwrap_err().to_string();
    assert!(e.contains("sqlite://") && e.contains("postgres://"), "{e}");
}

conformance!(
    a_batch_holds_one_account_and_says_which,
    |db: TestDb| async move {
        let s = &db.store;
        let mut rs = Vec::new();
        for n in 0..150 {
            let mut r = rel(&format!("i-{n}"), "r1", false);
            r.account = ["", "prod", "staging"][n % 3].to_string();
            rs.push(r);
        }
        s.enqueue(&rs, t0()).await.unwrap();
        let account = |id: &str| {
            let n: usize = id[2..].parse().unwrap();
            ["", "prod", "staging"][n % 3]
        };
        let mut sizes = Vec::new();
        while let Some(b) = s.claim("w", t0(), LEASE, 100, None).await.unwrap() {
            for m in &b.members {
                assert_eq!(b.account, account(&m.instance_id), "{}", m.instance_id);
            }
            sizes.push((b.account.clone(), b.members.len()));
            // A split keeps the account: the halves go back as batches of their own.
            let half: Vec<ReleaseId> = b.members.iter().map(|m| m.release_id).collect();
            let (a, c) = half.split_at(half.len() / 2);
            if b.members.len() > 1 {
                assert!(s
                    .finish_batch(
                        &b.fence,
                        BatchState::Split,
                        Some("X"),
                        &[],
                        &[a.to_vec(), c.to_vec()],
                        t0()
                    )
                    .await
                    .unwrap());
                continue;
            }
            let done: Vec<_> = b.members.iter().map(|m| (m.clone(), ok())).collect();
            assert!(s
                .finish_batch(&b.fence, BatchState::Done, None, &done, &[], t0())
                .await
                .unwrap());
        }
        let rows = s.list_releases(&ReleaseFilter::default()).await.unwrap();
        assert_eq!(rows.len(), 150);
        for r in rows {
            assert_eq!(r.state, "succeeded");
            assert_eq!(r.account, account(&r.instance_id));
        }
        assert!(sizes.iter().any(|(a, n)| a == "prod" && *n == 50));
    }
);

/// A database written by the first schema (one account) is upgraded in place: its releases
/// stay, and belong to the default account.
#[tokio::test]
async fn upgrading_from_the_first_schema_keeps_every_release() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    std::fs::create_dir(&first).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/sqlite/0001_queue.sql"
        ),
        first.join("0001_queue.sql"),
    )
    .unwrap();
    let db = dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    {
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(first.as_path())
            .await
            .unwrap()
            .run_direct(&mut c)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO releases (instance_id, region, policy, force, terminate_subscription,
               state, not_before, created_at, updated_at)
             VALUES ('i-old', 'cn-hangzhou', 'p', 0, 0, 'pending', 0, 0, 0)",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let s = Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows = s.list_releases(&ReleaseFilter::default()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].instance_id, "i-old");
    assert_eq!(rows[0].account, "", "the default account");
    let b = s
        .claim("w", t0(), LEASE, 100, None)
        .await
        .unwrap()
        .expect("the old release is still due");
    assert_eq!(b.account, "");
    assert_eq!(b.members[0].instance_id, "i-old");
}

conformance!(
    an_instance_released_once_is_never_queued_again,
    |db: TestDb| async move {
        let s = &db.store;
        s.enqueue(&[rel("i-1", "r1", false)], t0()).await.unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let done: Vec<_> = b.members.iter().map(|m| (m.clone(), ok())).collect();
        assert!(s
            .finish_batch(&b.fence, BatchState::Done, None, &done, &[], t0())
            .await
            .unwrap());
        // A slow pass that listed i-1 before it went now tries to queue it again.
        let again = s
            .enqueue(&[rel("i-1", "r1", false), rel("i-2", "r1", false)], t0())
            .await
            .unwrap();
        assert_eq!(
            again.iter().map(|(_, i)| i.as_str()).collect::<Vec<_>>(),
            ["i-2"],
            "a released instance is gone for good"
        );
        assert_eq!(state_of(s, "i-1").await, ["succeeded"]);
    }
);

conformance!(
    holds_quarantines_and_released_instances_keep_enqueue_out,
    |db: TestDb| async move {
        let s = &db.store;
        let a = s
            .enqueue(&[rel("i-1", "r1", false), rel("i-2", "r1", false)], t0())
            .await
            .unwrap();
        // An operator's cancel holds i-1 out of policy p until retried; for a limited time,
        // until then.
        s.cancel_release(a[0].0, "alice", "debugging", None, t0())
            .await
            .unwrap();
        assert!(s
            .enqueue(&[rel("i-1", "r1", false)], t0())
            .await
            .unwrap()
            .is_empty());
        let holds = s.holds(t0()).await.unwrap();
        assert_eq!(holds.len(), 1);
        assert!(holds[0].describe().contains("held by alice"));
        // A hold for a time says until when as every time for people is said.
        let until = t0() + chrono::Duration::hours(1);
        s.cancel_release(a[1].0, "alice", "flaky", Some(until), t0())
            .await
            .unwrap();
        let ev = s
            .events_where(&ecs_janitor::store::EventFilter {
                instance_id: Some("i-2".into()),
                kind: Some("cancelled".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            ev[0].detail.ends_with(&format!(
                "held until {}",
                until.format("%Y-%m-%d %H:%M UTC")
            )),
            "{}",
            ev[0].detail
        );
        s.retry_release(a[1].0, "alice", "", t0()).await.unwrap();
        s.retry_release(a[0].0, "alice", "", t0()).await.unwrap();
        assert!(
            s.holds(t0()).await.unwrap().is_empty(),
            "retry lifts the hold"
        );
        // A quarantine after a permanent refusal, doubling with each repeat.
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let m = b.members.clone();
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, t0())
            .await
            .unwrap());
        let refused = |m: &BatchMember| {
            (
                m.clone(),
                MemberOutcome::Failed {
                    code: "DependencyViolation.RouteEntry".into(),
                    message: "route".into(),
                    request_id: None,
                    quarantine: Some(chrono::Duration::hours(1)),
                },
            )
        };
        let end: Vec<_> = m.iter().map(refused).collect();
        assert!(s
            .finish_batch(&b.fence, BatchState::Failed, None, &end, &[], t0())
            .await
            .unwrap());
        assert!(s
            .enqueue(
                &[rel("i-1", "r1", false)],
                t0() + chrono::Duration::minutes(59)
            )
            .await
            .unwrap()
            .is_empty());
        let q = s.holds(t0()).await.unwrap();
        assert_eq!(q.len(), 2);
        assert!(q
            .iter()
            .all(|h| h.until == Some(t0() + chrono::Duration::hours(1))));
        // After it, eligible again; a second refusal waits twice as long.
        let later = t0() + chrono::Duration::hours(2);
        let c = s.enqueue(&[rel("i-1", "r1", false)], later).await.unwrap();
        assert_eq!(c.len(), 1);
        let b = s
            .claim("w", later, LEASE, 100, None)
            .await
            .unwrap()
            .unwrap();
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, later)
            .await
            .unwrap());
        let end: Vec<_> = b.members.iter().map(refused).collect();
        s.finish_batch(&b.fence, BatchState::Failed, None, &end, &[], later)
            .await
            .unwrap();
        let q = s.holds(later).await.unwrap();
        let i1 = q.iter().find(|h| h.instance_id == "i-1").unwrap();
        assert_eq!(
            (i1.repeats, i1.until),
            (2, Some(later + chrono::Duration::hours(2)))
        );
        // A released instance is never queued again, even if ECS still lists it.
        let d = s.enqueue(&[rel("i-9", "r1", false)], t0()).await.unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        assert_eq!(b.members[0].release_id, d[0].0);
        s.finish_batch(
            &b.fence,
            BatchState::Done,
            None,
            &[(b.members[0].clone(), ok())],
            &[],
            t0(),
        )
        .await
        .unwrap();
        assert!(s
            .enqueue(&[rel("i-9", "r1", false)], t0())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.recheck_reads(&["i-9".into()], t0())
                .await
                .unwrap()
                .released
                .get("i-9"),
            Some(&d[0].0)
        );
    }
);

conformance!(
    a_scope_limits_claims_and_the_pause_records_who,
    |db: TestDb| async move {
        let s = &db.store;
        let mut other = rel("o-1", "r1", false);
        other.policy = "other".into();
        s.enqueue(&[rel("i-1", "r1", false), other], t0())
            .await
            .unwrap();
        let n = s
            .create_scope("run-1", Some(&["p".into()]), None)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let b = s
            .claim("w", t0(), LEASE, 100, Some("run-1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.members.len(), 1);
        assert_eq!(b.members[0].instance_id, "i-1");
        assert!(s
            .claim("w", t0(), LEASE, 100, Some("run-1"))
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            s.next_due(t0(), Some("run-1")).await.unwrap(),
            Some(t0() + lease_as_chrono())
        );
        s.drop_scope("run-1").await.unwrap();
        assert!(s.pause_state().await.unwrap().is_none());
        assert_eq!(s.pause("alice", "freeze", t0()).await.unwrap(), None);
        let p = s.pause_state().await.unwrap().unwrap();
        assert_eq!((p.by.as_str(), p.reason.as_str()), ("alice", "freeze"));
        // Pausing again keeps the first pause, its since-when too (found trying it: a second
        // pause put its own who, why and time in place of the first's).
        let later = t0() + chrono::Duration::hours(1);
        assert_eq!(
            s.pause("bob", "second", later).await.unwrap(),
            Some(p.clone())
        );
        assert_eq!(s.pause_state().await.unwrap(), Some(p));
        s.resume("bob", "", t0()).await.unwrap();
        assert!(s.pause_state().await.unwrap().is_none());
        let id = s.database_id().await.unwrap();
        assert!(!id.is_empty());
        assert_eq!(s.database_id().await.unwrap(), id, "stable");
    }
);

conformance!(
    pauses_at_the_same_moment_make_one_pause,
    |db: TestDb| async move {
        // Eight operators pause at once: one pause is made, the others are told of it, and the
        // audit log says paused once, by whoever made it (a read-then-write let several
        // believe they paused, and the last to write stood as the pause's author).
        let s = &db.store;
        let calls = (0..8).map(|i| {
            let who = format!("op{i}");
            async move { (who.clone(), s.pause(&who, "freeze", t0()).await.unwrap()) }
        });
        let answers = futures::future::join_all(calls).await;
        let made: Vec<&String> = answers
            .iter()
            .filter(|(_, a)| a.is_none())
            .map(|(w, _)| w)
            .collect();
        assert_eq!(made.len(), 1, "{answers:?}");
        let p = s.pause_state().await.unwrap().unwrap();
        assert_eq!(&p.by, made[0]);
        for (_, a) in &answers {
            if let Some(told) = a {
                assert_eq!(told, &p);
            }
        }
        let paused = s
            .events_where(&ecs_janitor::store::EventFilter {
                kind: Some("paused".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(paused.len(), 1, "{paused:?}");
    }
);

conformance!(
    the_read_before_a_claim_says_the_pause_and_the_snapshots_waiting,
    |db: TestDb| async move {
        use ecs_janitor::policy::{SnapshotDisks, SnapshotOptions};
        let s = &db.store;
        let nothing = s.before_claim(t0()).await.unwrap();
        assert_eq!((nothing.paused, nothing.snapshots_waiting), (None, false));
        // A release without snapshots is no work for the snapshot stage.
        s.enqueue(&[rel("i-1", "r1", false)], t0()).await.unwrap();
        assert!(!s.before_claim(t0()).await.unwrap().snapshots_waiting);
        s.pause("alice", "freeze", t0()).await.unwrap();
        let paused = s.before_claim(t0()).await.unwrap();
        assert_eq!(paused.paused, s.pause_state().await.unwrap());
        assert_eq!(paused.paused.map(|p| p.by), Some("alice".to_string()));
        s.enqueue(
            &[NewRelease {
                snapshot: Some(SnapshotOptions {
                    retention_days: 7,
                    disks: SnapshotDisks::All,
                }),
                ..rel("i-2", "r1", false)
            }],
            t0(),
        )
        .await
        .unwrap();
        assert!(s.before_claim(t0()).await.unwrap().snapshots_waiting);
        s.resume("bob", "", t0()).await.unwrap();
        let resumed = s.before_claim(t0()).await.unwrap();
        assert_eq!((resumed.paused, resumed.snapshots_waiting), (None, true));
        // And the policy sets of the replicas running then, each once.
        assert!(resumed.live_policy_sets.is_empty());
        let until = t0() + chrono::Duration::seconds(90);
        for (id, digest) in [("a", "d1"), ("b", "d1"), ("c", "d2")] {
            s.replica_seen(id, "n", digest, "p", until, t0())
                .await
                .unwrap();
        }
        s.replica_seen("gone", "n", "d3", "p", t0(), t0())
            .await
            .unwrap();
        let mut sets = s
            .before_claim(t0() + chrono::Duration::seconds(1))
            .await
            .unwrap()
            .live_policy_sets;
        sets.sort();
        assert_eq!(sets, ["d1", "d2"], "live replicas' sets, each once");
    }
);

fn lease_as_chrono() -> chrono::Duration {
    chrono::Duration::from_std(LEASE).unwrap()
}

conformance!(
    no_attempt_on_an_expired_lease_or_while_paused,
    |db: TestDb| async move {
        let s = &db.store;
        s.enqueue(&[rel("i-1", "r1", false)], t0()).await.unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let late = t0() + lease_as_chrono() + chrono::Duration::seconds(1);
        assert!(
            !s.begin_attempt(&b.fence, &[], &b.client_token, late)
                .await
                .unwrap(),
            "a call on an expired lease"
        );
        s.pause("alice", "freeze", t0()).await.unwrap();
        assert!(
            !s.begin_attempt(&b.fence, &[], &b.client_token, t0())
                .await
                .unwrap(),
            "a call while paused"
        );
        s.resume("alice", "", t0()).await.unwrap();
        assert!(s
            .begin_attempt_for(&b.fence, &[], &b.client_token, Some(LEASE), None, t0())
            .await
            .unwrap());
    }
);

conformance!(
    no_attempt_while_a_running_replica_runs_another_policy_set,
    |db: TestDb| async move {
        let s = &db.store;
        s.enqueue(&[rel("i-1", "r1", false)], t0()).await.unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let attempt = |set: Option<&'static str>| {
            s.begin_attempt_for(&b.fence, &[], &b.client_token, Some(LEASE), set, t0())
        };
        let minute = chrono::Duration::minutes(1);
        // A replica with another set that stopped beating a minute ago holds nothing.
        s.replica_seen("old", "n0", "d2", "p", t0() - minute, t0() - minute * 2)
            .await
            .unwrap();
        assert!(attempt(Some("d1")).await.unwrap(), "a replica gone");
        // One that joined after the claim, running another set: the call is not sent.
        s.replica_seen("new", "n1", "d2", "p", t0() + minute, t0())
            .await
            .unwrap();
        assert!(
            !attempt(Some("d1")).await.unwrap(),
            "a call while a running replica runs another policy set"
        );
        assert!(
            attempt(None).await.unwrap(),
            "without a set of its own (a store-level caller), nothing to compare"
        );
        // Once it runs the same files, calls go again.
        s.replica_seen("new", "n1", "d1", "p", t0() + minute, t0())
            .await
            .unwrap();
        assert!(attempt(Some("d1")).await.unwrap(), "the same set");
    }
);

conformance!(
    claims_skip_accounts_refused_as_a_whole,
    |db: TestDb| async move {
        let s = &db.store;
        let mut a = rel("i-1", "r1", false);
        a.account = "a_b".into();
        let mut b = rel("i-2", "r1", false);
        b.account = "axb".into();
        s.enqueue(&[a, b], t0()).await.unwrap();
        // `_` is not a wildcard here: skipping axb leaves a_b claimable, and the other way round.
        let got = s
            .claim_spread("w", t0(), LEASE, 100, None, &["axb".into()], &[])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.account, "a_b");
        assert!(s
            .claim_spread("w", t0(), LEASE, 100, None, &["axb".into()], &[])
            .await
            .unwrap()
            .is_none());
        let got = s
            .claim_spread("w", t0(), LEASE, 100, None, &["a_b".into()], &[])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.account, "axb");
    }
);

conformance!(
    a_claim_prefers_a_region_this_process_is_not_busy_in,
    |db: TestDb| async move {
        let s = &db.store;
        let busy = |r: &str| vec![(String::new(), r.to_string())];
        // r1's releases are the oldest, two batches' worth; r2 has one due too.
        let mut all: Vec<NewRelease> = (0..150)
            .map(|k| rel(&format!("i-a{k}"), "r1", false))
            .collect();
        all.push(rel("i-b0", "r2", false));
        s.enqueue(&all, t0()).await.unwrap();
        let first = s
            .claim_spread("w", t0(), LEASE, 100, None, &[], &[])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.region, "r1", "the oldest due release leads");
        // Busy in r1: the next batch comes from r2, though r1's are older.
        let second = s
            .claim_spread("w", t0(), LEASE, 100, None, &[], &busy("r1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((second.region.as_str(), second.members.len()), ("r2", 1));
        // Nothing due elsewhere: busy or not, r1's rest is claimed.
        let third = s
            .claim_spread("w", t0(), LEASE, 100, None, &[], &busy("r1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((third.region.as_str(), third.members.len()), ("r1", 50));
    }
);

conformance!(
    a_success_records_no_last_error_and_keeps_its_words_in_the_log,
    |db: TestDb| async move {
        let s = &db.store;
        s.enqueue(&[rel("i-1", "r1", false), rel("i-2", "r1", false)], t0())
            .await
            .unwrap();
        // A first call fails and is retried: the error is each release's last error meanwhile.
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, t0())
            .await
            .unwrap());
        let later = t0() + chrono::Duration::seconds(5);
        assert!(s
            .retry_later(&b.fence, "InternalError", "boom", later, false, t0())
            .await
            .unwrap());
        assert!(s
            .list_releases(&ReleaseFilter::default())
            .await
            .unwrap()
            .iter()
            .all(|r| r.last_error.as_deref() == Some("boom")));
        // The retry releases them.
        let b = s
            .claim("w", later, LEASE, 100, None)
            .await
            .unwrap()
            .unwrap();
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, later)
            .await
            .unwrap());
        let done: Vec<_> = b.members.iter().map(|m| (m.clone(), ok())).collect();
        assert!(s
            .finish_batch(&b.fence, BatchState::Done, None, &done, &[], later)
            .await
            .unwrap());
        let rows = s.list_releases(&ReleaseFilter::default()).await.unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert_eq!(r.state, "succeeded");
            assert_eq!(r.last_error, None, "a success is not an error: {r:?}");
            assert_eq!(r.request_id.as_deref(), Some("RID"));
            // As `queue list --json`, `queue show` and the API show it.
            let shown = serde_json::to_value(s.release(r.id).await.unwrap()).unwrap();
            assert!(shown["last_error"].is_null(), "{shown}");
        }
        // The words of the success stay in the audit log.
        let succeeded: Vec<_> = s
            .events(100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "succeeded")
            .collect();
        assert_eq!(succeeded.len(), 2);
        assert!(succeeded.iter().all(|e| e.detail == "released"));
    }
);

/// A SQLite file opened read-only by its URL is a typed store error that names the file, the
/// problem and the remedy, whether opening or the first write finds it.
#[tokio::test]
async fn a_read_only_sqlite_url_is_diagnosed_with_the_file_and_the_remedy() {
    use ecs_janitor::store::SqliteProblem;
    let db = common::sqlite().await;
    let file = db.url.strip_prefix("sqlite://").unwrap().to_string();
    let e = match Store::connect(&format!("{}?mode=ro", db.url)).await {
        Err(e) => e,
        Ok(ro) => ro.set_setting("probe", "x").await.unwrap_err(),
    };
    let d = e
        .sqlite_diagnosis()
        .unwrap_or_else(|| panic!("not diagnosed: {e:?}"));
    assert_eq!(d.problem, SqliteProblem::OpenedReadOnly);
    assert_eq!(d.file, file);
    let msg = e.to_string();
    assert!(
        msg.contains(&file) && msg.contains("remove mode=ro"),
        "{msg}"
    );
    assert!(
        ecs_janitor::store::SqliteDiagnosis::find(&e).is_some(),
        "found from the error itself"
    );
    // The writable store is untouched and goes on.
    db.store.set_setting("probe", "y").await.unwrap();
}

/// Reads run on connections of their own beside SQLite's writer; a database in memory lives in
/// one connection, so there the reads must see the writer's own: what was written is read back.
#[tokio::test]
async fn a_sqlite_database_in_memory_reads_back_what_it_wrote() {
    let s = Store::connect("sqlite::memory:").await.unwrap();
    s.set_setting("probe", "x").await.unwrap();
    s.enqueue(&[rel("i-mem", "cn-hangzhou", false)], t0())
        .await
        .unwrap();
    assert_eq!(state_of(&s, "i-mem").await, vec!["pending"]);
    assert_eq!(s.counts().await.unwrap().pending, 1);
}

/// Claims and completes every due release of `s` at `at`.
async fn release_all(s: &Store, at: DateTime<Utc>) {
    while let Some(b) = s.claim("w", at, LEASE, 100, None).await.unwrap() {
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, at)
            .await
            .unwrap());
        let done: Vec<_> = b.members.iter().map(|m| (m.clone(), ok())).collect();
        assert!(s
            .finish_batch(&b.fence, BatchState::Done, None, &done, &[], at)
            .await
            .unwrap());
    }
}

conformance!(
    each_release_keeps_its_saving_and_the_sums_are_exact,
    |db: TestDb| async move {
        use ecs_janitor::money::Money;
        use ecs_janitor::store::ReleaseSaving;
        let s = &db.store;
        let saving = |minor: Option<i64>, currency: &str| ReleaseSaving {
            basis: "compute_and_disks".into(),
            monthly: minor.map(|m| Money::new(m, currency)),
            renewal_avoided: None,
        };
        // Yesterday: two releases in CNY (one of unknown price); today one in CNY, one in USD.
        let yesterday = t0() - chrono::Duration::days(1);
        let due_yesterday = |id: &str| {
            let mut r = rel(id, "r1", false);
            r.not_before = yesterday;
            r
        };
        let priced = |mut r: NewRelease, saving: ReleaseSaving| {
            r.saving = Some(saving);
            r
        };
        s.enqueue(
            &[
                priced(due_yesterday("i-a"), saving(Some(39_040), "CNY")),
                priced(due_yesterday("i-b"), saving(None, "CNY")),
            ],
            yesterday,
        )
        .await
        .unwrap();
        release_all(s, yesterday).await;
        s.enqueue(
            &[
                priced(rel("i-c", "r1", false), saving(Some(10), "CNY")),
                priced(rel("i-d", "r2", false), saving(Some(4_000), "USD")),
            ],
            t0(),
        )
        .await
        .unwrap();
        release_all(s, t0()).await;
        // Still waiting out its grace: upcoming, not saved.
        let mut later = rel("i-e", "r1", false);
        later.not_before = t0() + chrono::Duration::days(1);
        s.enqueue(&[priced(later, saving(Some(35_040), "CNY"))], t0())
            .await
            .unwrap();
        release_all(s, t0()).await;

        let sum = s.savings_summary(t0()).await.unwrap();
        let all = |t: &ecs_janitor::money::Totals| t.iter().collect::<Vec<Money>>();
        assert_eq!(
            all(&sum.since_start),
            vec![Money::new(39_050, "CNY"), Money::new(4_000, "USD")]
        );
        // t0 is 2026-11-26: yesterday is in the same month.
        assert_eq!(all(&sum.this_month), all(&sum.since_start));
        assert_eq!(all(&sum.upcoming), vec![Money::new(35_040, "CNY")]);
        assert_eq!(sum.released_unknown, 1);

        let days = s.savings_by_day(t0(), 30).await.unwrap();
        assert_eq!(days.len(), 30);
        let last = &days[29];
        let before = &days[28];
        assert_eq!(
            (before.releases, all(&before.saved)),
            (2, vec![Money::new(39_040, "CNY")])
        );
        assert_eq!(
            (last.releases, all(&last.saved)),
            (2, vec![Money::new(10, "CNY"), Money::new(4_000, "USD")])
        );
        assert!(days[..28].iter().all(|d| d.releases == 0));

        let by_policy = s.savings_by_policy().await.unwrap();
        let cny = by_policy.iter().find(|p| p.currency == "CNY").unwrap();
        assert_eq!((cny.released_minor, cny.pending_minor), (39_050, 35_040));

        // The queue's listing shows the figure each release was queued with.
        let rows = s.list_releases(&ReleaseFilter::default()).await.unwrap();
        let a_row = rows.iter().find(|r| r.instance_id == "i-a").unwrap();
        assert_eq!(
            a_row.saving.as_ref().and_then(|s| s.monthly.clone()),
            Some(Money::new(39_040, "CNY"))
        );
        let json = serde_json::to_value(a_row).unwrap();
        assert_eq!(
            json["saving"],
            serde_json::json!({"basis": "compute_and_disks",
                "monthly": {"amount": "390.40", "currency": "CNY"}, "renewal_avoided": null})
        );
        let b_row = rows.iter().find(|r| r.instance_id == "i-b").unwrap();
        assert_eq!(
            b_row.saving.as_ref().map(|s| s.monthly.is_none()),
            Some(true)
        );
        let unpriced = s.enqueue(&[rel("i-f", "r1", false)], t0()).await.unwrap();
        let row = s.release(unpriced[0].0).await.unwrap();
        assert!(
            row.saving.is_none(),
            "a release queued unpriced has no figure"
        );
    }
);

conformance!(
    exemptions_are_kept_replaced_listed_and_removed_with_who_and_why,
    |db: TestDb| async move {
        let s = &db.store;
        s.enqueue(&[rel("i-1", "r1", false), rel("i-2", "r1", false)], t0())
            .await
            .unwrap();
        let until = t0() + chrono::Duration::days(3);
        let done = s
            .exempt("i-1", until, "alice", "legal hold", t0())
            .await
            .unwrap();
        assert!(!done.replaced);
        assert_eq!(done.cancelled.len(), 1, "its pending release is cancelled");
        assert_eq!(state_of(s, "i-1").await, vec!["cancelled"]);
        assert_eq!(
            state_of(s, "i-2").await,
            vec!["pending"],
            "others untouched"
        );
        let later = until + chrono::Duration::days(1);
        let again = s
            .exempt("i-1", later, "bob", "extended", t0())
            .await
            .unwrap();
        assert!(again.replaced);
        assert!(again.cancelled.is_empty());
        let rows = s.exemptions(t0()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].until, rows[0].by.as_str(), rows[0].reason.as_str()),
            (later, "bob", "extended")
        );
        let map = s.exemption_map(t0()).await.unwrap();
        assert_eq!(map["i-1"].reason, "extended");
        assert!(s.exemptions(later).await.unwrap().is_empty(), "ended");
        assert!(s
            .remove_exemption("i-1", "carol", "done", t0())
            .await
            .unwrap());
        assert!(!s
            .remove_exemption("i-1", "carol", "done", t0())
            .await
            .unwrap());
        assert!(s.exemptions(t0()).await.unwrap().is_empty());
        let kinds: Vec<(String, String)> = s
            .events(50)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.instance_id.as_deref() == Some("i-1"))
            .map(|e| (e.kind, e.detail))
            .collect();
        assert!(
            kinds
                .iter()
                .any(|(k, d)| k == "exempted" && d.contains("by alice: legal hold")),
            "{kinds:?}"
        );
        assert!(
            kinds
                .iter()
                .any(|(k, d)| k == "exemption_removed" && d == "by carol: done"),
            "{kinds:?}"
        );
        assert!(
            kinds
                .iter()
                .any(|(k, d)| k == "cancelled" && d.contains("legal hold")),
            "{kinds:?}"
        );
    }
);

conformance!(
    seen_tag_exemptions_are_replaced_by_each_pass_that_lists_the_instance,
    |db: TestDb| async move {
        use ecs_janitor::store::SeenExemption;
        let s = &db.store;
        let seen = |id: &str, problem: Option<&str>| SeenExemption {
            instance_id: id.into(),
            region: "r1".into(),
            policy: "p".into(),
            value: "soon".into(),
            until: problem.is_none().then(|| t0() + chrono::Duration::days(2)),
            reason: String::new(),
            problem: problem.map(str::to_string),
            seen_at: t0(),
        };
        s.record_seen_exemptions(
            &[seen("i-1", None), seen("i-2", Some("unreadable"))],
            |_| true,
        )
        .await
        .unwrap();
        let rows = s.seen_exemptions().await.unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.instance_id.as_str()).collect();
        assert_eq!(ids, vec!["i-2", "i-1"], "invalid first");
        // A pass that listed i-1 (no longer exempt) but not i-2 forgets only i-1.
        s.record_seen_exemptions(&[], |id| id == "i-1")
            .await
            .unwrap();
        let rows = s.seen_exemptions().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].instance_id, "i-2");
        assert_eq!(rows[0].until, None);
    }
);

conformance!(
    the_snapshot_stage_is_leased_fenced_and_gates_the_batch,
    |db: TestDb| async move {
        use ecs_janitor::policy::{SnapshotDisks, SnapshotOptions};
        let s = &db.store;
        let snap = Some(SnapshotOptions {
            retention_days: 7,
            disks: SnapshotDisks::All,
        });
        s.enqueue(
            &[
                NewRelease {
                    snapshot: snap,
                    ..rel("i-1", "r1", false)
                },
                NewRelease {
                    snapshot: snap,
                    ..rel("i-2", "r1", false)
                },
            ],
            t0(),
        )
        .await
        .unwrap();
        assert!(
            s.claim("w", t0(), LEASE, 100, None)
                .await
                .unwrap()
                .is_none(),
            "batched before its snapshots"
        );
        let staged = s
            .claim_snapshot_stage("w1", t0(), LEASE, 10, None)
            .await
            .unwrap();
        assert_eq!(staged.len(), 2);
        assert_eq!(staged[0].retention_days, 7);
        assert_eq!(staged[0].disks, SnapshotDisks::All);
        assert!(
            s.claim_snapshot_stage("w2", t0(), LEASE, 10, None)
                .await
                .unwrap()
                .is_empty(),
            "leased"
        );
        assert_eq!(state_of(s, "i-1").await, vec!["snapshotting"]);
        let (a, b) = (staged[0].id, staged[1].id);
        let disks = vec!["d-1".to_string(), "d-2".to_string()];
        assert!(s.plan_snapshots(a, "w1", &disks, t0()).await.unwrap());
        assert!(
            !s.plan_snapshots(a, "w2", &disks, t0()).await.unwrap(),
            "not w2's lease"
        );
        let rows = s.snapshots_of(a).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_ne!(rows[0].client_token, rows[1].client_token);
        // Planning again keeps the stored tokens.
        assert!(s.plan_snapshots(a, "w1", &disks, t0()).await.unwrap());
        assert_eq!(s.snapshots_of(a).await.unwrap(), rows);
        s.record_snapshot(
            a,
            "w1",
            "d-1",
            ecs_janitor::store::SnapshotUpdate {
                snapshot_id: Some("s-1"),
                state: "progressing",
                failure: None,
            },
            t0(),
        )
        .await
        .unwrap();
        s.record_snapshot(
            a,
            "w1",
            "d-2",
            ecs_janitor::store::SnapshotUpdate {
                snapshot_id: Some("s-2"),
                state: "accomplished",
                failure: None,
            },
            t0(),
        )
        .await
        .unwrap();
        assert!(
            !s.snapshots_ready(a, "w1", t0()).await.unwrap(),
            "s-1 still progressing"
        );
        s.record_snapshot(
            a,
            "w1",
            "d-1",
            ecs_janitor::store::SnapshotUpdate {
                snapshot_id: None,
                state: "accomplished",
                failure: None,
            },
            t0(),
        )
        .await
        .unwrap();
        assert!(!s.snapshots_ready(a, "w2", t0()).await.unwrap(), "fenced");
        assert!(s.snapshots_ready(a, "w1", t0()).await.unwrap());
        assert_eq!(state_of(s, "i-1").await, vec!["pending"]);
        assert_eq!(
            s.snapshots_of(a).await.unwrap()[0].snapshot_id.as_deref(),
            Some("s-1")
        );
        assert!(s
            .snapshot_failed(b, "w1", "Janitor.SnapshotFailed", "it failed", t0())
            .await
            .unwrap());
        assert_eq!(state_of(s, "i-2").await, vec!["failed"]);
        let batch = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        assert_eq!(batch.members.len(), 1);
        assert_eq!(batch.members[0].instance_id, "i-1");
    }
);

conformance!(
    the_audit_log_shows_each_release_with_the_saving_it_was_released_with,
    |db: TestDb| async move {
        use ecs_janitor::money::Money;
        use ecs_janitor::store::{EventFilter, ReleaseSaving};
        let s = &db.store;
        let priced = ReleaseSaving {
            basis: "renewal_avoided".into(),
            monthly: Some(Money::new(0, "CNY")),
            renewal_avoided: Some(Money::new(50_282, "CNY")),
        };
        let unknown = ReleaseSaving {
            basis: "compute_and_disks".into(),
            monthly: None,
            renewal_avoided: None,
        };
        let with = |mut r: NewRelease, saving: &ReleaseSaving| {
            r.saving = Some(saving.clone());
            r
        };
        // i-c was not priced.
        let a = s
            .enqueue(
                &[
                    with(rel("i-a", "r1", false), &priced),
                    with(rel("i-b", "r1", false), &unknown),
                    rel("i-c", "r1", false),
                ],
                t0(),
            )
            .await
            .unwrap();
        let kept = s.savings_of(&[a[0].0, a[1].0, a[2].0]).await.unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[&a[0].0], priced);
        release_all(s, t0()).await;
        let events = s.events_where(&EventFilter::default()).await.unwrap();
        let succeeded = |id: &str| {
            events
                .iter()
                .find(|e| e.kind == "succeeded" && e.instance_id.as_deref() == Some(id))
                .unwrap_or_else(|| panic!("{id} succeeded in {events:?}"))
        };
        assert_eq!(succeeded("i-a").saving, Some(priced));
        assert_eq!(succeeded("i-b").saving, Some(unknown));
        assert_eq!(succeeded("i-c").saving, None, "not priced");
        assert!(
            events
                .iter()
                .filter(|e| e.kind != "succeeded")
                .all(|e| e.saving.is_none()),
            "only a release's success carries its figure"
        );
        let json = serde_json::to_value(succeeded("i-a")).unwrap();
        assert_eq!(json["saving"]["renewal_avoided"]["amount"], "502.82");
        // The filters still narrow it (their columns are the events', not the releases').
        let only = s
            .events_where(&EventFilter {
                instance_id: Some("i-a".into()),
                kind: Some("succeeded".into()),
                policy: Some("p".into()),
                since: Some(t0()),
                limit: Some(5),
            })
            .await
            .unwrap();
        assert_eq!(only.len(), 1);
        assert!(only[0].saving.is_some());
    }
);

conformance!(
    a_retry_after_a_failed_snapshot_makes_it_again_and_forgets_no_disk,
    |db: TestDb| async move {
        use ecs_janitor::policy::{SnapshotDisks, SnapshotOptions};
        let s = &db.store;
        let snap = Some(SnapshotOptions {
            retention_days: 7,
            disks: SnapshotDisks::All,
        });
        s.enqueue(
            &[NewRelease {
                snapshot: snap,
                ..rel("i-1", "r1", false)
            }],
            t0(),
        )
        .await
        .unwrap();
        let id = s
            .claim_snapshot_stage("w", t0(), LEASE, 10, None)
            .await
            .unwrap()[0]
            .id;
        let disks = vec!["d-1".to_string(), "d-2".to_string()];
        assert!(s.plan_snapshots(id, "w", &disks, t0()).await.unwrap());
        let before = s.snapshots_of(id).await.unwrap();
        s.record_snapshot(
            id,
            "w",
            "d-1",
            ecs_janitor::store::SnapshotUpdate {
                snapshot_id: Some("s-1"),
                state: "accomplished",
                failure: None,
            },
            t0(),
        )
        .await
        .unwrap();
        s.record_snapshot(
            id,
            "w",
            "d-2",
            ecs_janitor::store::SnapshotUpdate {
                snapshot_id: Some("s-2"),
                state: "failed",
                failure: None,
            },
            t0(),
        )
        .await
        .unwrap();
        assert!(s
            .snapshot_failed(id, "w", "Janitor.SnapshotFailed", "s-2 failed", t0())
            .await
            .unwrap());
        s.retry_release(id, "alice", "quota raised", t0())
            .await
            .unwrap();
        let staged = s
            .claim_snapshot_stage("w", t0(), LEASE, 10, None)
            .await
            .unwrap();
        assert_eq!(staged.len(), 1, "the stage starts again");
        let rows = &staged[0].snapshots;
        assert_eq!(
            rows.len(),
            2,
            "both disks are still to be snapshotted: {rows:?}"
        );
        assert_eq!(rows[0].state, "accomplished");
        assert_eq!(rows[0].snapshot_id.as_deref(), Some("s-1"));
        assert_eq!(rows[1].state, "creating");
        assert_eq!(rows[1].snapshot_id, None);
        assert_ne!(rows[1].client_token, before[1].client_token, "a new token");
        assert!(
            !s.snapshots_ready(id, "w", t0()).await.unwrap(),
            "d-2 has no snapshot yet"
        );
    }
);

conformance!(
    an_exemption_written_after_the_recheck_stops_the_call,
    |db: TestDb| async move {
        let s = &db.store;
        s.enqueue(&[rel("i-1", "r1", false), rel("i-2", "r1", false)], t0())
            .await
            .unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let done = s
            .exempt(
                "i-2",
                t0() + chrono::Duration::days(1),
                "alice",
                "hold",
                t0(),
            )
            .await
            .unwrap();
        assert!(
            done.cancelled.is_empty(),
            "in a batch: left to the call's last check"
        );
        assert!(
            !s.begin_attempt(&b.fence, &[], &b.client_token, t0())
                .await
                .unwrap(),
            "a call with an exempt member"
        );
        assert!(s
            .remove_exemption("i-2", "alice", "done", t0())
            .await
            .unwrap());
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, t0())
            .await
            .unwrap());
    }
);

conformance!(
    only_releases_queued_with_a_grace_are_read_for_marks,
    |db: TestDb| async move {
        let s = &db.store;
        let mut waiting = rel("i-wait", "r1", false);
        waiting.not_before = t0() + chrono::Duration::hours(2);
        s.enqueue(&[rel("i-now", "r1", false), waiting], t0())
            .await
            .unwrap();
        let ids = |rows: Vec<ecs_janitor::store::ReleaseRow>| {
            rows.into_iter().map(|r| r.instance_id).collect::<Vec<_>>()
        };
        assert_eq!(ids(s.waiting_releases().await.unwrap()), vec!["i-wait"]);
        assert_eq!(s.active_releases().await.unwrap().len(), 2);
        // Released, it is no longer waiting.
        release_all(s, t0() + chrono::Duration::hours(3)).await;
        assert!(s.waiting_releases().await.unwrap().is_empty());
    }
);

conformance!(
    an_exemption_since_the_recheck_refuses_the_call_unless_its_member_is_settled,
    |db: TestDb| async move {
        let s = &db.store;
        s.enqueue(
            &[
                rel("i-a", "cn-hangzhou", false),
                rel("i-b", "cn-hangzhou", false),
            ],
            t0(),
        )
        .await
        .unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        assert_eq!(b.members.len(), 2);
        // Exempted after the claim's re-check: the call for both is refused, nothing written.
        let until = t0() + chrono::Duration::days(1);
        s.exempt("i-a", until, "alice", "owner asked", t0())
            .await
            .unwrap();
        assert!(!s
            .begin_attempt(&b.fence, &[], &b.client_token, t0())
            .await
            .unwrap());
        assert_eq!(state_of(s, "i-a").await, vec!["in_flight"]);
        // The next decision settles the exempt member: the call for the other one goes ahead.
        let a = b.members.iter().find(|m| m.instance_id == "i-a").unwrap();
        let cancelled = MemberOutcome::Cancelled {
            reason: "exempt".into(),
        };
        assert!(s
            .begin_attempt(&b.fence, &[(a.clone(), cancelled)], &b.client_token, t0())
            .await
            .unwrap());
        assert_eq!(state_of(s, "i-a").await, vec!["cancelled"]);
        assert_eq!(state_of(s, "i-b").await, vec!["in_flight"]);
    }
);

conformance!(
    a_refused_attempt_writes_nothing_of_what_it_settled_or_quarantined,
    |db: TestDb| async move {
        let s = &db.store;
        let rs: Vec<_> = ["i-a", "i-b", "i-c"]
            .iter()
            .map(|i| rel(i, "cn-hangzhou", false))
            .collect();
        s.enqueue(&rs, t0()).await.unwrap();
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let member = |id: &str| {
            b.members
                .iter()
                .find(|m| m.instance_id == id)
                .unwrap()
                .clone()
        };
        let settled = vec![
            (
                member("i-a"),
                MemberOutcome::Cancelled {
                    reason: "now protected".into(),
                },
            ),
            (
                member("i-b"),
                MemberOutcome::Failed {
                    code: "InvalidInstance.NotPostPaid".into(),
                    message: "refused for good".into(),
                    request_id: None,
                    quarantine: Some(chrono::Duration::hours(1)),
                },
            ),
        ];
        let kinds = || async {
            let mut k: Vec<String> = s
                .events(100)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            k.sort();
            k
        };
        let before = kinds().await;
        // Paused since the re-check: the gate refuses, and the decision's settles and its
        // quarantine are not written either.
        s.pause("alice", "freeze", t0()).await.unwrap();
        let paused_kinds = kinds().await;
        assert!(!s
            .begin_attempt(&b.fence, &settled, &b.client_token, t0())
            .await
            .unwrap());
        for i in ["i-a", "i-b", "i-c"] {
            assert_eq!(state_of(s, i).await, ["in_flight"], "{i}");
        }
        assert!(s.holds(t0()).await.unwrap().is_empty(), "no quarantine");
        assert_eq!(kinds().await, paused_kinds, "no event");
        assert!(before.len() < paused_kinds.len());
        // Resumed: the same attempt goes ahead with all of it.
        s.resume("bob", "", t0()).await.unwrap();
        assert!(s
            .begin_attempt(&b.fence, &settled, &b.client_token, t0())
            .await
            .unwrap());
        assert_eq!(state_of(s, "i-a").await, ["cancelled"]);
        assert_eq!(state_of(s, "i-b").await, ["failed"]);
        assert_eq!(state_of(s, "i-c").await, ["in_flight"]);
        let holds = s.holds(t0()).await.unwrap();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].instance_id, "i-b");
        let after = kinds().await;
        for k in ["call_sent", "cancelled", "failed"] {
            assert!(after.iter().any(|x| x == k), "{k} in {after:?}");
        }
    }
);

conformance!(
    a_releases_attempts_count_the_calls_that_named_it_across_batches,
    |db: TestDb| async move {
        let s = &db.store;
        let ids = ["i-1", "i-2", "i-3", "i-4"];
        let rels: Vec<_> = ids.iter().map(|i| rel(i, "cn-hangzhou", false)).collect();
        s.enqueue(&rels, t0()).await.unwrap();
        let attempts = |rows: Vec<ecs_janitor::store::ReleaseRow>| {
            let mut v: Vec<(String, i64)> = rows
                .into_iter()
                .map(|r| (r.instance_id, r.attempts))
                .collect();
            v.sort();
            v.into_iter().map(|(_, n)| n).collect::<Vec<_>>()
        };
        let filter = ReleaseFilter::default();
        let all = || s.list_releases(&filter);
        assert_eq!(attempts(all().await.unwrap()), vec![0, 0, 0, 0]);
        let b = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        assert!(s
            .begin_attempt(&b.fence, &[], &b.client_token, t0())
            .await
            .unwrap());
        // In flight: the batch's call counts for each member.
        assert_eq!(attempts(all().await.unwrap()), vec![1, 1, 1, 1]);
        // Refused and split in two: each half keeps the call it was named in.
        let ids: Vec<ReleaseId> = b.members.iter().map(|m| m.release_id).collect();
        let groups = vec![ids[..2].to_vec(), ids[2..].to_vec()];
        assert!(s
            .finish_batch(
                &b.fence,
                BatchState::Split,
                Some("InvalidOperation.Refused"),
                &[],
                &groups,
                t0()
            )
            .await
            .unwrap());
        assert_eq!(attempts(all().await.unwrap()), vec![1, 1, 1, 1]);
        // One half is sent again and released: two calls named each of its members.
        let x = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        assert!(s
            .begin_attempt(&x.fence, &[], &x.client_token, t0())
            .await
            .unwrap());
        let done: Vec<_> = x.members.iter().map(|m| (m.clone(), ok())).collect();
        assert!(s
            .finish_batch(&x.fence, BatchState::Done, None, &done, &[], t0())
            .await
            .unwrap());
        let rows = all().await.unwrap();
        for r in &rows {
            let sent_again = x.members.iter().any(|m| m.release_id == r.id);
            assert_eq!(
                r.attempts,
                if sent_again { 2 } else { 1 },
                "{}",
                r.instance_id
            );
        }
    }
);

conformance!(
    the_rechecks_one_read_says_what_its_four_reads_say,
    |db: TestDb| async move {
        let s = &db.store;
        let ids: Vec<String> = ["i-1", "i-2", "i-3", "i-4"].map(String::from).to_vec();
        let check = |label: &'static str| {
            let ids = ids.clone();
            async move {
                let at = t0() + chrono::Duration::minutes(5);
                let one = s.recheck_reads(&ids, at).await.unwrap();
                assert_eq!(
                    one.observations,
                    s.observations_of(&ids).await.unwrap(),
                    "{label}"
                );
                assert_eq!(one.paused, s.pause_state().await.unwrap(), "{label}");
                assert_eq!(
                    one.exemptions,
                    s.exemption_map(at).await.unwrap(),
                    "{label}"
                );
                one
            }
        };
        let empty = check("nothing stored").await;
        assert!(empty.observations.is_empty() && empty.released.is_empty());
        assert!(empty.paused.is_none());
        // Seen stopped, one released, paused, one exempt (and one whose exemption ended).
        s.observe("", "cn-hangzhou", &listed_stopped(&ids[..3]), t0())
            .await
            .unwrap();
        s.enqueue(&[rel("i-2", "cn-hangzhou", false)], t0())
            .await
            .unwrap();
        release_all(s, t0()).await;
        s.pause("alice", "incident 42", t0()).await.unwrap();
        s.exempt("i-3", t0() + chrono::Duration::days(1), "bob", "demo", t0())
            .await
            .unwrap();
        s.exempt(
            "i-9",
            t0() + chrono::Duration::minutes(1),
            "bob",
            "ended",
            t0(),
        )
        .await
        .unwrap();
        let full = check("everything stored").await;
        assert_eq!(full.observations.len(), 3);
        let i2 = s.list_releases(&ReleaseFilter::default()).await.unwrap();
        assert_eq!(
            full.released.into_iter().collect::<Vec<_>>(),
            vec![("i-2".to_string(), i2[0].id)],
            "only the released one, with its release"
        );
        assert_eq!(full.paused.as_ref().unwrap().reason, "incident 42");
        assert_eq!(
            full.exemptions.keys().collect::<Vec<_>>(),
            vec!["i-3"],
            "the ended one is not in force"
        );
    }
);

conformance!(
    pending_releases_of_policies_not_loaded_are_found,
    |db: TestDb| async move {
        let s = &db.store;
        let mut q = vec![
            rel("i-1", "r1", false),
            rel("i-2", "r1", false),
            rel("i-3", "r1", false),
        ];
        q[1].policy = "old".into();
        q[2].policy = "other".into();
        s.enqueue(&q, t0()).await.unwrap();
        let ids = |rows: Vec<ecs_janitor::store::ReleaseRow>| {
            rows.into_iter().map(|r| r.instance_id).collect::<Vec<_>>()
        };
        let loaded = vec!["p".to_string(), "other".to_string()];
        assert_eq!(ids(s.pending_outside(&loaded).await.unwrap()), ["i-2"]);
        assert_eq!(
            ids(s.pending_outside(&[]).await.unwrap()),
            ["i-1", "i-2", "i-3"]
        );
    }
);

conformance!(
    a_tick_whose_replica_stopped_is_taken_over_once_its_lease_ends,
    |db: TestDb| async move {
        let s = &db.store;
        let lease = chrono::Duration::seconds(30);
        let at = |secs: i64| t0() + chrono::Duration::seconds(secs);
        assert!(s.begin_run("p", t0(), "a", t0(), lease).await.unwrap());
        // Within its lease, nobody else takes the tick, and it is not abandoned.
        assert!(!s.begin_run("p", t0(), "b", at(10), lease).await.unwrap());
        // Renewed at 25 s, it holds until 55 s.
        s.renew_runs(&["p".to_string()], t0(), "a", at(25), lease)
            .await
            .unwrap();
        assert!(!s.begin_run("p", t0(), "b", at(40), lease).await.unwrap());
        assert!(s.abandoned_runs(at(40)).await.unwrap().is_empty());
        // Its replica stopped renewing: the tick is abandoned, and taken over once.
        let abandoned = s.abandoned_runs(at(56)).await.unwrap();
        assert_eq!(abandoned.len(), 1, "{abandoned:?}");
        assert_eq!(
            (
                abandoned[0].policy.as_str(),
                abandoned[0].scheduled_for,
                abandoned[0].owner.as_str()
            ),
            ("p", t0(), "a")
        );
        assert!(s.begin_run("p", t0(), "b", at(56), lease).await.unwrap());
        assert!(!s.begin_run("p", t0(), "c", at(57), lease).await.unwrap());
        assert!(s.abandoned_runs(at(57)).await.unwrap().is_empty());
        // The old owner's renewal no longer holds it.
        s.renew_runs(&["p".to_string()], t0(), "a", at(80), lease)
            .await
            .unwrap();
        assert_eq!(s.abandoned_runs(at(87)).await.unwrap().len(), 1);
        // A finished run is never taken over, however old.
        s.finish_run(&RunEnd::error("p", t0()), at(60))
            .await
            .unwrap();
        assert!(!s.begin_run("p", t0(), "c", at(3600), lease).await.unwrap());
        assert!(s.abandoned_runs(at(3600)).await.unwrap().is_empty());
    }
);

conformance!(
    an_abandoned_tick_a_later_tick_followed_is_closed_once,
    |db: TestDb| async move {
        let s = &db.store;
        let lease = chrono::Duration::seconds(30);
        let at = |secs: i64| t0() + chrono::Duration::seconds(secs);
        assert!(s.begin_run("p", t0(), "a", t0(), lease).await.unwrap());
        assert!(s.begin_run("p", at(60), "b", at(60), lease).await.unwrap());
        let abandoned = s.abandoned_runs(at(61)).await.unwrap();
        assert_eq!(abandoned.len(), 1, "{abandoned:?}");
        assert!(abandoned[0].superseded, "{abandoned:?}");
        // Closed once, with one event, whichever replica gets there first.
        assert!(s.close_abandoned("p", t0(), "gone", at(61)).await.unwrap());
        assert!(!s.close_abandoned("p", t0(), "gone", at(62)).await.unwrap());
        let failed = s
            .events_where(&ecs_janitor::store::EventFilter {
                kind: Some("run_failed".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(failed.len(), 1, "{failed:?}");
        // The later tick, still leased, is neither abandoned nor closed.
        assert!(s.abandoned_runs(at(62)).await.unwrap().is_empty());
        assert!(!s
            .close_abandoned("p", at(60), "gone", at(62))
            .await
            .unwrap());
    }
);

conformance!(
    a_claim_gives_back_each_member_as_queued_in_queue_order,
    |db: TestDb| async move {
        let s = &db.store;
        // Names as ECS allows them, and some it doesn't but a store must still carry whole:
        // quotes, backslashes, brackets, commas, Chinese, an emoji, nothing at all.
        let names = [
            "web-1",
            "say \"hi\"",
            "back\\slash",
            "[1, 2]",
            "生产-数据库",
            "🧹 janitor",
            "",
            "tab\there",
        ];
        let mut rs = Vec::new();
        for (n, name) in names.iter().enumerate() {
            rs.push(NewRelease {
                instance_name: name.to_string(),
                policy: format!("policy-{}", n % 3),
                ..rel(&format!("i-{n:02}"), "r1", false)
            });
        }
        rs.push(rel("i-busy", "r2", false));
        s.enqueue(&rs, t0()).await.unwrap();
        let queued: Vec<_> = s
            .list_releases(&ReleaseFilter::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.region == "r1")
            .map(|r| (r.id, r.instance_id, r.instance_name, r.policy))
            .collect();
        assert_eq!(queued.len(), names.len());
        // Claimed while r2 is busy here: the claim that prefers another pair.
        let busy = [(String::new(), "r2".to_string())];
        let b = s
            .claim_spread("w", t0(), LEASE, 100, None, &[], &busy)
            .await
            .unwrap()
            .expect("r1's releases are due");
        assert_eq!(b.region, "r1");
        let got: Vec<_> = b
            .members
            .iter()
            .map(|m| {
                assert_eq!(m.snapshot_days, None);
                (
                    m.release_id,
                    m.instance_id.clone(),
                    m.instance_name.clone(),
                    m.policy.clone(),
                )
            })
            .collect();
        let mut want = queued.clone();
        want.sort_by_key(|r| r.0);
        assert_eq!(got, want, "every member whole, in id order");
        // Whole as queued, not only as listed (a listing is read the same way).
        let got_names: Vec<&str> = b.members.iter().map(|m| m.instance_name.as_str()).collect();
        assert_eq!(got_names, names, "queued in this order");
        // And the other pair's, claimed anywhere.
        let b2 = s.claim("w", t0(), LEASE, 100, None).await.unwrap().unwrap();
        let ids: Vec<_> = b2.members.iter().map(|m| m.instance_id.as_str()).collect();
        assert_eq!((b2.region.as_str(), ids), ("r2", vec!["i-busy"]));
        assert!(s
            .claim("w", t0(), LEASE, 100, None)
            .await
            .unwrap()
            .is_none());
    }
);

conformance!(
    listings_longer_than_a_page_read_each_release_once_in_order,
    |db: TestDb| async move {
        let s = &db.store;
        // More than two of the listing's pages (5,000 releases a statement).
        let n = 12_345;
        let rs: Vec<_> = (0..n)
            .map(|k| NewRelease {
                policy: if k % 2 == 0 { "even" } else { "odd" }.into(),
                instance_name: format!("名前 \"{k}\""),
                ..rel(&format!("i-{k:05}"), "r1", false)
            })
            .collect();
        s.enqueue(&rs, t0()).await.unwrap();
        let all = s.list_releases(&ReleaseFilter::default()).await.unwrap();
        assert_eq!(all.len(), n);
        assert!(
            all.windows(2).all(|w| w[0].id > w[1].id),
            "newest first, each once"
        );
        let last = &all[0];
        assert_eq!(
            (last.instance_id.as_str(), last.instance_name.as_str()),
            ("i-12344", "名前 \"12344\"")
        );
        assert_eq!(last.state.to_string(), "pending");
        assert_eq!(last.reasons, "because");
        // A limit past a page's end, and a filter.
        let some = s
            .list_releases(&ReleaseFilter {
                limit: Some(5_001),
                ..ReleaseFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(some[..], all[..5_001]);
        let two_pages = s
            .list_releases(&ReleaseFilter {
                limit: Some(10_000),
                ..ReleaseFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(two_pages[..], all[..10_000]);
        let odd = s
            .list_releases(&ReleaseFilter {
                policy: Some("odd".into()),
                ..ReleaseFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(odd.len(), n / 2);
        assert!(odd.iter().all(|r| r.policy == "odd"));
        // Oldest first: the pending releases of a policy no longer loaded.
        let orphans = s.pending_outside(&["even".to_string()]).await.unwrap();
        let want: Vec<_> = odd.iter().rev().map(|r| r.id).collect();
        assert_eq!(orphans.iter().map(|r| r.id).collect::<Vec<_>>(), want);
        assert_eq!(s.active_releases().await.unwrap(), all);
    }
);

conformance!(
    observations_of_a_fleet_of_whole_pages_are_all_read,
    |db: TestDb| async move {
        let s = &db.store;
        // Two full pages of 5,000 and an empty one after them.
        let ids: Vec<String> = (0..9_999).map(|k| format!("i-{k:05}")).collect();
        s.observe("", "r1", &listed_stopped(&ids), t0())
            .await
            .unwrap();
        let later = t0() + chrono::Duration::hours(1);
        s.observe("", "r2", &listed_stopped(&["i-other".to_string()]), later)
            .await
            .unwrap();
        let seen = s.observations().await.unwrap();
        assert_eq!(seen.len(), ids.len() + 1);
        assert!(ids.iter().all(|i| seen.get(i) == Some(&t0())));
        assert_eq!(seen.get("i-other"), Some(&later));
        // Listed again with most of them no longer Stopped: every page of what r1 knew is
        // weighed, and those stops end; r2's is untouched.
        s.observe("", "r1", &listed_stopped(&ids[..100]), later)
            .await
            .unwrap();
        let seen = s.observations().await.unwrap();
        assert_eq!(seen.len(), 101);
        assert!(ids[..100].iter().all(|i| seen.get(i) == Some(&t0())));
        assert_eq!(seen.get("i-other"), Some(&later));
    }
);
