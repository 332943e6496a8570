//! Generates the agent API (protobuf messages + async ttrpc client/server) from protos/.
//! Pure Rust: ttrpc-codegen parses the .proto files itself, no protoc needed.

use std::fs;
use std::path::{Path, PathBuf};

const PROTOS: [&str; 2] = ["protos/agent.proto", "protos/health.proto"];

fn main() {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating ttrpc code from protos/");

    // The generated files start with inner attributes and `//!` docs, which `include!`
    // inside a module cannot take.
    for entry in fs::read_dir(&out).expect("reading OUT_DIR") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            strip_inner_attributes(&path);
        }
    }
}

fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path).expect("reading generated file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("#![") && !l.trim_start().starts_with("//!"))
        .collect();
    fs::write(path, kept.join("\n")).expect("rewriting generated file");
}
