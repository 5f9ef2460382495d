//! Crashes the fuzz targets found, each input kept in `fuzz/regressions/`
//! and run by the `fuzz` binary in its own process (an input that exhausts
//! memory aborts that process, not the tests). Ignored while the crash
//! stands; un-ignored with its fix.

use std::process::Command;

fn survives(target: &str, file: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(file);
    assert!(path.is_file(), "{} is checked in", path.display());
    let out = Command::new(env!("CARGO_BIN_EXE_fuzz"))
        .args([target, "--input"])
        .arg(&path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running the fuzz binary");
    assert!(
        out.status.success(),
        "{target} on {file}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `search_query`: page token `17640036000000` (an offset) makes tantivy
/// allocate ~84 TB for its top-docs heap; the process aborts.
/// Fixed: page tokens are cursors now (search/mod.rs), an offset is refused.
#[test]
fn a_huge_search_page_token_never_exhausts_memory() {
    survives("search_query", "search_query-huge-page-token");
}

/// `http_query`: `range=custom&from=2025-11-24 16:00:00&to=17641764003600000&by=location`
/// makes the timeline allocate ~39 GB (one u64 per hour over ~560,000
/// years); the process aborts.
/// Fixed: a timeline has at most `MAX_TIMELINE_BUCKETS` buckets, and
/// dashboard times end in year 9999 (store/views.rs).
#[test]
fn a_dashboard_timeline_of_any_range_never_exhausts_memory() {
    survives("http_query", "http_query-timeline-of-centuries");
}

/// `replay_parquet`: a damaged 1,492-byte Parquet file (mutated from the
/// corpus's `zstd.parquet`) takes ~38 s to read in the dev build (14 s
/// user, 15 s system), inside the parquet crate: page headers read from the
/// column chunk one after another, each skipping a thrift field with
/// `io::copy` over 8 KiB reads (`read_page_header` → `skip_till_depth`).
/// A replay of such a file stalled instead of reporting the row group.
/// Fixed: each column chunk's pages are walked by
/// `sightline_proto::parquet_guard` (every header read once, the walk linear
/// in the chunk) before the crate reads them; the row group is reported.
#[test]
fn a_damaged_replay_parquet_file_is_read_within_the_bound() {
    survives("replay_parquet", "replay_parquet-slow-page-headers");
    // 7,269 bytes, still reading after 60 s.
    survives("replay_parquet", "replay_parquet-over-60s");
}

/// `replay_parquet`: a damaged 1,475-byte Parquet file makes the parquet
/// crate's value decoder (parquet 60.1 `encodings/decoding.rs:379`, from
/// `read_records` in `read_typed`) ask for 7.9 GB at once; under the fuzz
/// runner's 4 GiB address-space bound the process aborts (on an edge box
/// with less memory, so would the agent).
/// Fixed: a dictionary page claiming more values than its bytes (or the
/// row group's rows) hold is refused by `sightline_proto::parquet_guard`
/// before the crate decodes it; the row group is reported.
#[test]
fn a_damaged_replay_parquet_page_never_exhausts_memory() {
    survives("replay_parquet", "replay_parquet-huge-page-alloc");
}

/// `dataset_b_parquet`: a damaged 863-byte Dataset B Parquet file makes the
/// core's loader (`enrich::LocationTable::load`, reading rows through the
/// parquet crate at `core-server/src/enrich/mod.rs:258`) ask for 32 GB at
/// once; an allocation failure aborts, the loader's `catch_unwind` cannot
/// keep the table in use: the core (or its reload) dies.
/// Fixed: the loader walks every column chunk's pages with
/// `sightline_proto::parquet_guard` first; the file is refused, naming it.
#[test]
fn a_damaged_dataset_b_parquet_file_never_exhausts_memory() {
    survives("dataset_b_parquet", "dataset_b_parquet-huge-alloc");
}

/// `media_jpeg`: a 664-byte JPEG whose frame header claims 12,304 × 9,520
/// pixels (mutated from the corpus; 20 such inputs of 664–1,018 bytes in the
/// 2026-11-30 run) passes the upload check's limits (16,384² and 512 MiB)
/// and makes `check_jpeg` (core-server/src/media/check.rs) decode a 351 MB
/// image: 1.5–6 s in the dev build on the loaded 2-core machine, over the
/// 2 s bound. A tiny upload buys a third of a gigabyte and seconds of a
/// blocking thread.
#[test]
fn a_tiny_jpeg_claiming_huge_dimensions_is_checked_within_the_bound() {
    survives("media_jpeg", "media_jpeg-huge-dimensions");
}
