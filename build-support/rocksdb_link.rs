//! Build script of the crates that use RocksDB (core-server, edge-agent).
//!
//! With `ROCKSDB_STATIC` set (as `.cargo/config.toml` does), librocksdb-sys
//! links Debian's `librocksdb.a` instead of `librocksdb.so`, and the static
//! archive does not name the libraries it needs as the shared object does
//! (its NEEDED entries): they are named here, linked as shared libraries.
//! Why static: only the RocksDB code Sightline calls is in the binary (the
//! shared object is mapped whole: ~9 MiB of the agent's resident set), and
//! its thread-locals are read without `__tls_get_addr` (3 % of the core's
//! CPU in the ingest profile). See BENCHMARKS.md.

fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_STATIC");
    if std::env::var_os("ROCKSDB_STATIC").is_some() {
        for lib in ["snappy", "z", "bz2", "lz4"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
        // Debian's libzstd by its file name: a plain `-lzstd` would find the
        // zstd-sys crate's own static libzstd first (built without the
        // dictionary builder that RocksDB calls, ZDICT_*).
        println!("cargo:rustc-link-lib=dylib:+verbatim=libzstd.so.1");
    }
}
