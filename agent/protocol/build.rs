//! Generates the protobuf messages and ttrpc stubs from `protos/` at build time (needs `protoc`,
//! from Debian's protobuf-compiler).

fn main() {
    let protos = ["protos/agent.proto", "protos/health.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(protos)
        .include("protos")
        .rust_protobuf()
        .run()
        .expect(
            "cannot generate the agent protocol code: is protoc installed (protobuf-compiler)?",
        );
    // The generated files carry inner attributes, which `include!` does not accept; the crate
    // sets the equivalent lints itself.
    for name in ["agent", "agent_ttrpc", "health", "health_ttrpc"] {
        let path = format!("{out}/{name}.rs");
        let text = std::fs::read_to_string(&path).expect("generated file exists");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("generated file is writable");
    }
}
