//! Build-time check that RocksDB comes from the system library.
//!
//! Tern links Debian's `librocksdb` through the `rocksdb` crate 0.20.x
//! instead of compiling RocksDB from source (about 16 CPU-minutes). The
//! `librocksdb-sys` build script only links the system library when
//! `ROCKSDB_LIB_DIR` is set; this script turns a missing header, library or
//! variable into one clear message saying what to install and set.

use std::path::Path;

const HOW_TO_FIX: &str = "install the system RocksDB library and point the build at it:\n\
    \n    apt-get install librocksdb-dev libclang-dev clang\n\
    \n    export ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu\n\
    \n(see docs/spool.md, section \"Building\")";

fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    println!("cargo:rerun-if-env-changed=ROCKSDB_INCLUDE_DIR");
    println!("cargo:rerun-if-changed=build.rs");

    let include_dir =
        std::env::var("ROCKSDB_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
    let header = Path::new(&include_dir).join("rocksdb/c.h");
    if !header.exists() {
        panic!(
            "tern-spool: the RocksDB C header {} was not found; {HOW_TO_FIX}",
            header.display()
        );
    }
    let Ok(lib_dir) = std::env::var("ROCKSDB_LIB_DIR") else {
        panic!(
            "tern-spool: ROCKSDB_LIB_DIR is not set, so librocksdb-sys would compile RocksDB from source; {HOW_TO_FIX}"
        );
    };
    let lib_dir = Path::new(&lib_dir);
    let found = ["librocksdb.so", "librocksdb.a"]
        .iter()
        .any(|name| lib_dir.join(name).exists());
    if !found {
        panic!(
            "tern-spool: ROCKSDB_LIB_DIR={} holds no librocksdb.so or librocksdb.a; {HOW_TO_FIX}",
            lib_dir.display()
        );
    }
}
