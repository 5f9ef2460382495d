//! Where an export goes, and how an hour replaces its last copy there: a
//! directory (temp name, fsync, rename) or an object store (a whole put,
//! then the manifest). See the promises in [`super`].

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use object_store::{
    path::Path as ObjectPath, ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart,
};
use tokio::io::AsyncReadExt as _;

use super::{ExportError, Hour, HourManifest, StoreOptions, PART_FILE};

/// Files up to this size are put in one request; larger ones in parts of it.
const SINGLE_PUT: u64 = 8 * 1024 * 1024;

/// The folder of the manifests and the position, beside the partitions.
pub const META_DIR: &str = "_sightline";

/// Names staged files apart when hours are written side by side.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// An export's destination.
pub enum Target {
    /// A local directory (`file:///abs/path`, or a path).
    Dir(PathBuf),
    /// An object store (`s3://bucket/prefix`): files are staged in `staging`
    /// (a local temporary directory) and put whole.
    Objects {
        store: Arc<dyn ObjectStore>,
        /// The key prefix (no leading or trailing `/`; may be empty).
        prefix: String,
        url: String,
        staging: tempfile::TempDir,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Target {
    /// Opens `url` (`file:///abs/dir`, a plain path, or `s3://bucket/prefix`
    /// with `options` by object_store's S3 key names, and the usual `AWS_*`
    /// environment variables). `field` names the setting it came from.
    pub fn open(
        field: &'static str,
        url: &str,
        options: &StoreOptions,
    ) -> Result<Self, ExportError> {
        if !url.contains("://") {
            return Ok(Target::Dir(PathBuf::from(url)));
        }
        let parsed = url::Url::parse(url)
            .map_err(|e| ExportError::invalid(field, format!("{url:?} is not a URL: {e}")))?;
        match parsed.scheme() {
            "file" => parsed.to_file_path().map(Target::Dir).map_err(|_| {
                ExportError::invalid(field, format!("{url:?}: not an absolute local path"))
            }),
            "s3" => {
                let bucket = parsed.host_str().unwrap_or_default();
                if bucket.is_empty() {
                    return Err(ExportError::invalid(
                        field,
                        format!("{url:?} names no bucket"),
                    ));
                }
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (k, v) in options {
                    let key: object_store::aws::AmazonS3ConfigKey = k.parse().map_err(|_| {
                        ExportError::invalid(field, format!("option {k:?} is not an S3 setting"))
                    })?;
                    b = b.with_config(key, v);
                }
                let store = b
                    .build()
                    .map_err(|e| ExportError::invalid(field, format!("cannot use {url}: {e}")))?;
                let staging = tempfile::Builder::new()
                    .prefix("sightline-export-")
                    .tempdir()
                    .map_err(|e| ExportError::Io {
                        path: std::env::temp_dir(),
                        source: e,
                    })?;
                Ok(Target::Objects {
                    store: Arc::new(store),
                    prefix: parsed.path().trim_matches('/').to_string(),
                    url: url.to_string(),
                    staging,
                })
            }
            other => Err(ExportError::invalid(
                field,
                format!("scheme {other:?}: expected file:// or s3://"),
            )),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Dir(d) => format!("file://{}", d.display()),
            Target::Objects { url, .. } => url.clone(),
        }
    }

    /// Where the hour's file is written before [`Target::publish`]: a
    /// dot-name beside its place (a directory), or the staging directory.
    pub fn staging_file(&self, hour: Hour) -> PathBuf {
        let n = STAGED.fetch_add(1, Ordering::Relaxed);
        let name = format!(".{PART_FILE}.{}-{n}.tmp", std::process::id());
        match self {
            Target::Dir(root) => root.join(hour.partition()).join(name),
            Target::Objects { staging, .. } => {
                staging.path().join(format!("{}{name}", hour.label()))
            }
        }
    }

    /// Puts the staged file in the hour's place (replacing the old one
    /// whole), then the manifest. The staged file is gone afterwards.
    pub async fn publish(
        &self,
        hour: Hour,
        staged: &Path,
        manifest: &HourManifest,
    ) -> Result<(), ExportError> {
        let body = serde_json::to_vec_pretty(manifest).expect("serialisable");
        let manifest_key = format!("{META_DIR}/hours/{}.json", hour.label());
        match self {
            Target::Dir(root) => {
                let (root, staged) = (root.clone(), staged.to_path_buf());
                tokio::task::spawn_blocking(move || {
                    let dest = root.join(hour.partition()).join(PART_FILE);
                    rename_synced(&staged, &dest)?;
                    write_file_atomic(&root.join(&manifest_key), &body)
                })
                .await?
            }
            Target::Objects { store, prefix, .. } => {
                let key = object_path(prefix, &format!("{}/{PART_FILE}", hour.partition()));
                let r = put_file(store.as_ref(), &key, staged).await;
                let _ = tokio::fs::remove_file(staged).await;
                r?;
                store
                    .put(&object_path(prefix, &manifest_key), PutPayload::from(body))
                    .await?;
                Ok(())
            }
        }
    }

    /// Reads a small file under [`META_DIR`] (`None`: there is none).
    pub async fn read_meta(&self, name: &str) -> Result<Option<Vec<u8>>, ExportError> {
        let rel = format!("{META_DIR}/{name}");
        match self {
            Target::Dir(root) => {
                let p = root.join(rel);
                match tokio::fs::read(&p).await {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(ExportError::Io { path: p, source: e }),
                }
            }
            Target::Objects { store, prefix, .. } => {
                match store.get(&object_path(prefix, &rel)).await {
                    Ok(r) => Ok(Some(r.bytes().await?.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Replaces a small file under [`META_DIR`] whole.
    pub async fn write_meta(&self, name: &str, body: Vec<u8>) -> Result<(), ExportError> {
        let rel = format!("{META_DIR}/{name}");
        match self {
            Target::Dir(root) => {
                let p = root.join(rel);
                tokio::task::spawn_blocking(move || write_file_atomic(&p, &body)).await?
            }
            Target::Objects { store, prefix, .. } => {
                store
                    .put(&object_path(prefix, &rel), PutPayload::from(body))
                    .await?;
                Ok(())
            }
        }
    }
}

fn object_path(prefix: &str, rel: &str) -> ObjectPath {
    if prefix.is_empty() {
        ObjectPath::from(rel)
    } else {
        ObjectPath::from(format!("{prefix}/{rel}"))
    }
}

/// Puts a local file as one object: one request up to [`SINGLE_PUT`], a
/// multipart upload beyond (the object appears only when it completes).
async fn put_file(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    path: &Path,
) -> Result<(), ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = tokio::fs::metadata(path).await.map_err(io)?.len();
    if size <= SINGLE_PUT {
        let bytes = Bytes::from(tokio::fs::read(path).await.map_err(io)?);
        store.put(key, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let upload = store.put_multipart(key).await?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, SINGLE_PUT as usize);
    let mut f = tokio::fs::File::open(path).await.map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                w.abort().await?;
                return Err(io(e));
            }
        };
        if n == 0 {
            break;
        }
        w.wait_for_capacity(4).await?;
        w.write(&buf[..n]);
    }
    w.finish().await?;
    Ok(())
}

/// Renames `from` over `to` (creating `to`'s directory), then fsyncs the
/// directory so the rename survives a power loss. `from` MUST be fsync'd.
pub fn rename_synced(from: &Path, to: &Path) -> Result<(), ExportError> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ExportError::Io { path: p, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::rename(from, to).map_err(io(to))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Writes `body` to `path` whole: a temp name beside it, fsync, rename.
pub fn write_file_atomic(path: &Path, body: &[u8]) -> Result<(), ExportError> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let n = STAGED.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}-{n}.tmp",
        path.file_name().and_then(|f| f.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let r = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(body)?;
            f.sync_all()
        })
        .map_err(|source| ExportError::Io {
            path: tmp.clone(),
            source,
        })
        .and_then(|()| rename_synced(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
