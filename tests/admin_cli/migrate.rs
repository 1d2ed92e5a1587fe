//! `jitocsp migrate`: repeated, and concurrent on a fresh database.

use std::process::Output;

use super::common::with_database;
use super::common::{skip_unless, Need};
use super::fixture::*;

#[test]
fn migrate_twice_is_fine() {
    if skip_unless(&[Need::Postgres]) {
        return;
    }
    let e = env();
    for _ in 0..2 {
        let out = run_with(&["migrate"], None, &[("DATABASE_URL", e.database_url.as_str())], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = run_with(&["migrate"], None, &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrates_on_a_fresh_database() {
    if skip_unless(&[Need::Postgres]) {
        return;
    }
    let name = format!("jitocsp_migtest_{}", std::process::id());
    let admin = db().await;
    // A role that cannot create the scratch database cannot run this test: that is a failure,
    // not a pass (scripts/services.sh up grants CREATEDB).
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create the scratch database {name}: {e:?}"));
    let url = with_database(&env().database_url, &name);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || run_with(&["migrate"], None, &[("DATABASE_URL", url.as_str())], None))
        })
        .collect();
    let outputs: Vec<Output> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    let fresh = jitocsp::db::connect(&url, &Default::default()).await.unwrap();
    let versions: Vec<i32> = fresh
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(fresh);
    let _ = admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
    for out in &outputs {
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let applied = outputs.iter().filter(|o| text(&o.stdout).contains("applied migrations")).count();
    assert_eq!(applied, 1, "exactly one run applies the schema");
    let known: Vec<i32> = jitocsp::db::migrate::MIGRATIONS.iter().map(|(v, _, _)| *v).collect();
    assert_eq!(versions, known);
}
