//! Writing a case: check the request, read the events and their footage,
//! write the files, the manifest, its signature and the public key, then
//! (for a download) zip the folder.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use sha2::{Digest as _, Sha256};
use sightline_proto::{v1::JoinedEvent, ApiError, Code};

use super::{
    key::{hex, SiteKey, PUBLIC_KEY_FILE},
    manifest::{CaseEvent, CaseFile, CaseLocation, Manifest, SiteKeyInfo, TimeRange, FORMAT},
    CaseRequest, CaseSummary, MANIFEST_FILE, MAX_CASE_BYTES, MAX_EVENTS_PER_CASE,
    MAX_EXPORTER_BYTES, MAX_REASON_BYTES, SIGNATURE_FILE,
};
use crate::{
    enrich::LocationTable,
    media::{Kind, MediaStore},
    store::Store,
};

/// The request's det_oids, each once in the order given, once every bound
/// holds; the refusal names the field otherwise.
pub fn check_request(req: &CaseRequest) -> Result<Vec<i64>, ApiError> {
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::field(
            "reason",
            "is required: say why the footage is exported",
        ));
    }
    if req.reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::field(
            "reason",
            format!("{} bytes, at most {MAX_REASON_BYTES}", req.reason.len()),
        ));
    }
    if let Some(c) = req
        .reason
        .chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
    {
        return Err(ApiError::field(
            "reason",
            format!("holds the control character U+{:04X}", c as u32),
        ));
    }
    let by = req.exported_by.trim();
    if by.is_empty()
        || req.exported_by.len() > MAX_EXPORTER_BYTES
        || by.chars().any(char::is_control)
    {
        return Err(ApiError::field(
            "exported_by",
            format!("must be 1..={MAX_EXPORTER_BYTES} bytes without control characters"),
        ));
    }
    if req.det_oids.is_empty() {
        return Err(ApiError::field(
            "det_oids",
            "is empty: select events to export",
        ));
    }
    if req.det_oids.len() > MAX_EVENTS_PER_CASE {
        return Err(ApiError::field(
            "det_oids",
            format!(
                "{} events, a case holds at most {MAX_EVENTS_PER_CASE}",
                req.det_oids.len()
            ),
        ));
    }
    if let Some(bad) = req.det_oids.iter().find(|&&o| o <= 0) {
        return Err(ApiError::field(
            "det_oids",
            format!("{bad} is not a det_oid (they are positive)"),
        ));
    }
    let mut seen = HashSet::new();
    Ok(req
        .det_oids
        .iter()
        .copied()
        .filter(|o| seen.insert(*o))
        .collect())
}

/// One event to export and the footage of it that is stored.
pub struct Planned {
    pub event: JoinedEvent,
    /// (kind, sha256, size), each object present in the store.
    pub files: Vec<(Kind, String, u64)>,
}

/// Reads the events (joined with `table`) and checks their footage. Refuses
/// the whole case, naming every det_oid that is not stored (or outside
/// `scope`: the same answer, so a scoped user learns nothing of it) or has
/// no footage left, and a case over [`MAX_CASE_BYTES`]. Blocking.
pub fn plan(
    store: &Store,
    table: &LocationTable,
    det_oids: &[i64],
    scope: Option<&BTreeSet<i64>>,
) -> Result<Vec<Planned>, ApiError> {
    let mut planned = Vec::with_capacity(det_oids.len());
    let (mut missing, mut bare) = (Vec::new(), Vec::new());
    let mut total = 0u64;
    for &oid in det_oids {
        let ev = store.get_event(oid)?.filter(|e| {
            let loc = e
                .detection
                .as_ref()
                .map_or(0, |d| d.geographical_location_oid);
            scope.is_none_or(|s| s.contains(&loc))
        });
        let Some(mut ev) = ev else {
            missing.push(oid);
            continue;
        };
        store.fill_media(std::slice::from_mut(&mut ev))?;
        table.join(&mut ev);
        let mut files = Vec::new();
        for r in &ev.media {
            let (Some(kind), Some(stored)) = (Kind::parse(&r.kind), store.get_media(&r.sha256)?)
            else {
                continue; // An object retention removed: listed as missing footage.
            };
            total = total.saturating_add(stored.media.size);
            files.push((kind, r.sha256.clone(), stored.media.size));
        }
        if files.is_empty() {
            bare.push(oid);
        }
        planned.push(Planned { event: ev, files });
    }
    if !missing.is_empty() || !bare.is_empty() {
        let mut why = Vec::new();
        if !missing.is_empty() {
            why.push(format!("no event with det_oid {}", list(&missing)));
        }
        if !bare.is_empty() {
            why.push(format!("no footage stored for det_oid {}", list(&bare)));
        }
        return Err(ApiError::new(
            Code::NotFound,
            format!("field `det_oids`: {}; nothing was exported", why.join("; ")),
        ));
    }
    if total > MAX_CASE_BYTES {
        return Err(ApiError::field_with(
            Code::TooLarge,
            "det_oids",
            format!(
                "the footage of these events is {total} bytes, a case holds at most {MAX_CASE_BYTES}"
            ),
        ));
    }
    Ok(planned)
}

fn list(oids: &[i64]) -> String {
    oids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The path of a file of the case, relative to its root.
pub fn file_path(det_oid: i64, kind: Kind) -> String {
    let ext = match kind {
        Kind::Clip => "mp4",
        Kind::Snapshot | Kind::Thumbnail => "jpg",
    };
    format!("events/{det_oid}/{}.{ext}", kind.as_str())
}

/// Copies every planned object into `root` (which exists and is empty),
/// checking each against its address; answers each event's files.
pub async fn fetch_files(
    media: &MediaStore,
    planned: &[Planned],
    root: &Path,
) -> Result<Vec<Vec<CaseFile>>, ApiError> {
    let mut out = Vec::with_capacity(planned.len());
    for p in planned {
        let oid = det_oid(&p.event);
        tokio::fs::create_dir_all(root.join(format!("events/{oid}")))
            .await
            .map_err(io_error)?;
        let mut files = Vec::new();
        for (kind, sha, size) in &p.files {
            let path = file_path(oid, *kind);
            let (got, len) = media
                .copy_to_file(*kind, sha, &root.join(&path))
                .await
                .map_err(|e| ApiError::from(&e))?;
            if got != *sha || len != *size {
                return Err(ApiError::internal(format!(
                    "the stored {} of det_oid {oid} no longer matches its address {sha} \
                     ({len} bytes hashing to {got}): damaged at rest, not exported",
                    kind.as_str()
                )));
            }
            files.push(CaseFile {
                path,
                kind: kind.as_str().into(),
                content_type: kind.content_type().into(),
                bytes: len,
                sha256: got,
            });
        }
        out.push(files);
    }
    Ok(out)
}

fn det_oid(e: &JoinedEvent) -> i64 {
    e.detection
        .as_ref()
        .and_then(|d| d.detection_oid)
        .unwrap_or_default()
}

fn io_error(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(28) {
        ApiError::unavailable(format!("writing the case: {e}"))
    } else {
        ApiError::internal(format!("writing the case: {e}"))
    }
}

/// RFC 3339, UTC, milliseconds.
pub fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// `case-<yyyymmddThhmmssZ>-<8 hex>`.
fn case_id(now_ms: i64) -> String {
    let stamp: String = rfc3339(now_ms)
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    format!("case-{stamp}Z-{:08x}", rand::random::<u32>())
}

/// The manifest of the planned events with their fetched files.
pub fn manifest(
    req: &CaseRequest,
    key: &SiteKey,
    planned: &[Planned],
    files: Vec<Vec<CaseFile>>,
) -> Manifest {
    let events: Vec<CaseEvent> = planned
        .iter()
        .zip(files)
        .map(|(p, files)| case_event(&p.event, files))
        .collect();
    let from_ms = events.iter().map(|e| e.timestamp_ms).min().unwrap_or(0);
    let to_ms = events.iter().map(|e| e.timestamp_ms).max().unwrap_or(0);
    Manifest {
        format: FORMAT.into(),
        case_id: case_id(req.now_ms),
        exported_by: req.exported_by.trim().into(),
        exported_at: rfc3339(req.now_ms),
        exported_at_ms: req.now_ms,
        reason: req.reason.trim().into(),
        site_key: SiteKeyInfo {
            algorithm: "Ed25519".into(),
            fingerprint_sha256: key.public().fingerprint(),
            public_key_file: PUBLIC_KEY_FILE.into(),
            signature_file: SIGNATURE_FILE.into(),
        },
        time_range: TimeRange {
            from: rfc3339(from_ms),
            to: rfc3339(to_ms),
            from_ms,
            to_ms,
        },
        events,
    }
}

fn case_event(e: &JoinedEvent, files: Vec<CaseFile>) -> CaseEvent {
    let d = e.detection.clone().unwrap_or_default();
    let loc = e.location.clone().unwrap_or_default();
    CaseEvent {
        det_oid: d.detection_oid.unwrap_or_default(),
        camera: d.video_camera_oid,
        location: CaseLocation {
            geographical_location_oid: d.geographical_location_oid,
            matched: e.location_matched,
            geographical_location: loc.geographical_location,
            extra: loc.extra.into_iter().collect(),
        },
        item: d.item_name,
        timestamp: rfc3339(d.timestamp_detected),
        timestamp_ms: d.timestamp_detected,
        confidence: d.confidence,
        bounding_box: d.r#box.map(|b| [b.x, b.y, b.width, b.height]),
        attributes: d.attributes.into_iter().collect::<BTreeMap<_, _>>(),
        agent_id: e.agent_id.clone(),
        seq: e.seq,
        accepted_ms: e.accepted_ms,
        committed_ms: e.committed_ms,
        files,
    }
}

/// Writes `manifest.json`, its signature and the public key into `root`;
/// answers the summary. Blocking.
pub fn seal(root: &Path, key: &SiteKey, m: &Manifest) -> Result<CaseSummary, ApiError> {
    let mut bytes = serde_json::to_vec_pretty(m).expect("a manifest serialises");
    bytes.push(b'\n');
    let sig = key.sign(&bytes);
    write_synced(&root.join(MANIFEST_FILE), &bytes).map_err(io_error)?;
    write_synced(&root.join(SIGNATURE_FILE), &sig).map_err(io_error)?;
    write_synced(&root.join(PUBLIC_KEY_FILE), key.public_pem().as_bytes()).map_err(io_error)?;
    let files: Vec<&CaseFile> = m.events.iter().flat_map(|e| &e.files).collect();
    Ok(CaseSummary {
        case_id: m.case_id.clone(),
        det_oids: m.events.iter().map(|e| e.det_oid).collect(),
        files: files.len(),
        footage_bytes: files.iter().map(|f| f.bytes).sum(),
        manifest_sha256: hex(&Sha256::digest(&bytes)),
        key_fingerprint: m.site_key.fingerprint_sha256.clone(),
        exported_by: m.exported_by.clone(),
        exported_at_ms: m.exported_at_ms,
        reason: m.reason.clone(),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create_new(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Zips the case folder `root` (its manifest's files, the manifest, the
/// signature, the public key) into `out`, each entry stored (not
/// compressed) under `<case_id>/`. Blocking.
pub fn zip_case(root: &Path, m: &Manifest, out: &std::fs::File) -> Result<(), ApiError> {
    let zip_error = |e: zip::result::ZipError| ApiError::internal(format!("writing the zip: {e}"));
    let when = zip_time(m.exported_at_ms);
    let mut names: Vec<String> = vec![
        MANIFEST_FILE.into(),
        SIGNATURE_FILE.into(),
        PUBLIC_KEY_FILE.into(),
    ];
    names.extend(
        m.events
            .iter()
            .flat_map(|e| e.files.iter().map(|f| f.path.clone())),
    );
    let mut w = zip::ZipWriter::new(std::io::BufWriter::new(out));
    for name in names {
        let path: PathBuf = root.join(&name);
        let len = std::fs::metadata(&path).map_err(io_error)?.len();
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(when)
            .unix_permissions(0o644)
            .large_file(len >= u32::MAX as u64);
        w.start_file(format!("{}/{name}", m.case_id), opts)
            .map_err(zip_error)?;
        let mut f = std::fs::File::open(&path).map_err(io_error)?;
        std::io::copy(&mut f, &mut w).map_err(io_error)?;
    }
    let buf = w.finish().map_err(zip_error)?;
    let file = buf.into_inner().map_err(|e| io_error(e.into_error()))?;
    file.sync_all().map_err(io_error)
}

/// The export time as a zip entry's (local, 2-second) time, in UTC.
fn zip_time(ms: i64) -> zip::DateTime {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    zip::DateTime::from_date_and_time(
        t.year().clamp(1980, 2107) as u16,
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    )
    .unwrap_or_default()
}

/// Everything after the request's checks: plan, fetch, seal, into `root`
/// (an existing empty folder).
pub async fn build(
    store: &Arc<Store>,
    media: &MediaStore,
    table: Arc<LocationTable>,
    key: &Arc<SiteKey>,
    req: &CaseRequest,
    root: &Path,
) -> Result<(Manifest, CaseSummary), ApiError> {
    let det_oids = check_request(req)?;
    let planned = {
        let (store, scope) = (store.clone(), req.locations.clone());
        tokio::task::spawn_blocking(move || plan(&store, &table, &det_oids, scope.as_ref()))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??
    };
    let files = fetch_files(media, &planned, root).await?;
    let m = manifest(req, key, &planned, files);
    let (key, dir, m2) = (key.clone(), root.to_path_buf(), m.clone());
    let summary = tokio::task::spawn_blocking(move || seal(&dir, &key, &m2))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((m, summary))
}
