//! In-process tests: a real store, accounts and audit log in a temp folder,
//! backed up to a real folder and restored.

use std::{collections::HashMap, path::Path, sync::Arc};

use super::{
    blob_key,
    manifest::{check_path, to_upload, FileEntry, Manifest, MANIFEST_FORMAT},
    manifest_key, restore, Dest, Sources,
};
use crate::{
    access::AccessDb,
    audit::{Action, Actor, AuditLog, Entry},
    enrich::Locations,
    store::Store,
};

fn sources(data: &Path) -> Sources {
    let store = Arc::new(Store::open(data, false, 1 << 20).unwrap());
    let access = Arc::new(AccessDb::open(&data.join("access")).unwrap());
    let audit = AuditLog::open(&data.join("audit"), 1 << 20).unwrap();
    let token = data.join("admin.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let b = data.parent().unwrap().join("b.csv");
    std::fs::write(
        &b,
        "geographical_location_oid,geographical_location\n1,Gate 1\n",
    )
    .unwrap();
    Sources {
        store,
        access,
        audit,
        locations: Arc::new(Locations::new(Some(b)).unwrap()),
        data_dir: data.to_path_buf(),
        registry: None,
        admin_token: token,
        staging: Sources::staging_for(data),
        busy: tokio::sync::Mutex::new(()),
    }
}

/// Writes `n` keys of `size` random bytes into the store's `meta` column family
/// and flushes them into an SST file.
fn fill(s: &Sources, tag: &str, n: usize, size: usize) {
    let db = s.store.db().unwrap();
    let cf = crate::store::cf(&db, "meta");
    for i in 0..n {
        // Random: does not compress.
        let value: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
        db.put_cf(cf, format!("test/{tag}/{i}"), value).unwrap();
    }
    db.flush_cf(cf).unwrap();
}

#[tokio::test]
async fn a_backup_restores_every_file_and_a_second_uploads_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("core");
    let s = sources(&data);
    fill(&s, "a", 200, 4096);
    s.audit
        .record(Entry::new(Actor::System, Action::AuditCut))
        .await
        .unwrap();
    let dest = dir.path().join("backups");
    let to = dest.display().to_string();
    let first = s.backup(&to).await.unwrap();
    // Everything, each distinct content once (some files are alike).
    assert!(first.uploaded_files > 0 && first.uploaded_files <= first.files);
    assert!(first.bytes > 200 * 4096 / 2, "{first:?}");
    assert!(
        !Sources::staging_for(&data).exists(),
        "the staging copy is removed"
    );

    fill(&s, "b", 10, 100);
    let second = s.backup(&to).await.unwrap();
    assert_ne!(first.id, second.id);
    assert!(
        second.uploaded_bytes * 4 < first.uploaded_bytes,
        "the second backup uploads only what changed: {second:?} after {first:?}"
    );

    // The first backup is still restorable, and so is the newest.
    let old = dir.path().join("old");
    restore(&to, Some(&first.id), &old, &dir.path().join("old-search"))
        .await
        .unwrap();
    let new = dir.path().join("new");
    let r = restore(&to, None, &new, &dir.path().join("new-search"))
        .await
        .unwrap();
    assert_eq!(r.manifest.id, second.id);
    assert_eq!(r.manifest.search, "rebuild");
    assert!(new.join("admin.token").exists());
    assert!(new.join("audit").read_dir().unwrap().next().is_some());
    assert_eq!(
        r.dataset_b.as_deref(),
        Some(new.join("dataset-b/b.csv").as_path())
    );

    // Both open: the store with its keys, the accounts, the audit log.
    let db_keys = |p: &Path| {
        let st = Store::open(p, false, 1 << 20).unwrap();
        let db = st.db().unwrap();
        let cf = crate::store::cf(&db, "meta");
        db.prefix_iterator_cf(cf, b"test/")
            .map(|kv| kv.unwrap())
            .take_while(|(k, _)| k.starts_with(b"test/"))
            .count()
    };
    assert_eq!(db_keys(&old), 200);
    assert_eq!(db_keys(&new), 210);
    AccessDb::open(&new.join("access")).unwrap();
    AuditLog::open(&new.join("audit"), 1 << 20).unwrap();
}

#[tokio::test]
async fn a_restore_into_a_non_empty_folder_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = sources(&dir.path().join("core"));
    let to = dir.path().join("backups").display().to_string();
    s.backup(&to).await.unwrap();
    let target = dir.path().join("busy");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("something"), "x").unwrap();
    let e = restore(&to, None, &target, &dir.path().join("s"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty") && e.contains("busy"), "{e}");
    assert!(e.contains("something"), "{e}");
    // A stale search index would not match the restored store.
    let search = dir.path().join("search");
    std::fs::create_dir_all(&search).unwrap();
    std::fs::write(search.join("meta.json"), "{}").unwrap();
    let e = restore(&to, None, &dir.path().join("fresh"), &search)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("search index folder"), "{e}");
    assert!(!dir.path().join("fresh").exists());
}

#[tokio::test]
async fn a_corrupted_backup_file_is_refused_naming_it_and_nothing_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let s = sources(&dir.path().join("core"));
    fill(&s, "a", 50, 1000);
    let dest = dir.path().join("backups");
    let to = dest.display().to_string();
    let b = s.backup(&to).await.unwrap();
    let m = std::fs::read(dest.join(manifest_key(&b.id))).unwrap();
    let m = Manifest::parse("m", &m).unwrap();
    let victim = m.files.iter().find(|f| f.path.ends_with(".sst")).unwrap();
    let blob = dest.join(blob_key(&victim.sha256));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let target = dir.path().join("restored");
    let e = restore(&to, None, &target, &dir.path().join("s"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&victim.path) && e.contains("corrupt"), "{e}");
    assert!(!target.exists(), "nothing restored");
    assert!(!dir.path().join("restored.restoring").exists());
}

#[tokio::test]
async fn a_relative_destination_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = sources(&dir.path().join("core"));
    let e = s.backup("relative/dir").await.unwrap_err();
    assert!(e.message.contains("field `to`"), "{}", e.message);
    assert!(Dest::open("to", "s3://", true).is_err());
}

#[test]
fn a_manifest_path_outside_the_data_directory_is_refused() {
    for bad in [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "",
        "a//b",
        "./a",
        "a\\b",
    ] {
        assert!(check_path(bad).is_err(), "{bad:?}");
    }
    for good in ["store/000012.sst", "admin.token", "dataset-b/b.csv"] {
        check_path(good).unwrap();
    }
    let m = Manifest {
        format: MANIFEST_FORMAT,
        id: "x".into(),
        created_ms: 0,
        core_version: "0".into(),
        watermarks: vec![],
        search: "rebuild".into(),
        files: vec![FileEntry {
            path: "../../etc/cron.d/x".into(),
            size: 1,
            sha256: "0".repeat(64),
        }],
    };
    let e = Manifest::parse("m", &serde_json::to_vec(&m).unwrap()).unwrap_err();
    assert!(e.contains("../../etc/cron.d/x"), "{e}");
    let other = Manifest { format: 9, ..m };
    let e = Manifest::parse("m", &serde_json::to_vec(&other).unwrap()).unwrap_err();
    assert!(e.contains("format 9"), "{e}");
}

#[test]
fn only_blobs_the_destination_lacks_are_uploaded_each_once() {
    let f = |path: &str, size: u64, c: char| FileEntry {
        path: path.into(),
        size,
        sha256: c.to_string().repeat(64),
    };
    let files = vec![
        f("store/1.sst", 10, 'a'),
        f("store/2.sst", 20, 'b'),
        f("store/copy.sst", 20, 'b'),
        f("store/MANIFEST-5", 3, 'c'),
        f("admin.token", 4, 'd'),
    ];
    let held: HashMap<String, u64> = [
        ("a".repeat(64), 10),
        // Same hash, another size: not the same blob (a torn upload).
        ("d".repeat(64), 1),
    ]
    .into_iter()
    .collect();
    let up: Vec<&str> = to_upload(&files, &held)
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(up, ["store/2.sst", "store/MANIFEST-5", "admin.token"]);
}
