//! Any language: a Python client generated from proto/ with grpcio-tools
//! creates a topic, produces, fetches, lists offsets, lists services by
//! reflection and is a consumer group member (GroupService) against a real
//! broker. Needs `python3`; installs
//! `grpcio-tools` and `grpcio-reflection` into target/python-deps when they
//! are missing (.ci/run does it up front).

#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use runnel_batch::partitioner::partition_for_key;
use serde_json::Value;

use support::{Broker, BrokerOptions, repo_root, with_deadline};

const PIP_HINT: &str = "install them with `pip install grpcio-tools grpcio-reflection` \
     (or `python3 -m pip install --target target/python-deps grpcio-tools grpcio-reflection`)";

/// Where .ci/run and this test install the Python packages.
fn deps_dir() -> PathBuf {
    repo_root().join("target/python-deps")
}

fn python(deps: &Path) -> Command {
    let mut cmd = Command::new("python3");
    let mut path = deps.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("PYTHONPATH") {
        path.push(":");
        path.push(old);
    }
    cmd.env("PYTHONPATH", path)
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}); is python3 installed?"))
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Makes `grpc_tools` and `grpc_reflection` importable, installing them into
/// [`deps_dir`] from PyPI if needed.
fn ensure_python_deps() -> PathBuf {
    let deps = deps_dir();
    let probe =
        "import grpc_tools.protoc, grpc_reflection.v1alpha.proto_reflection_descriptor_database";
    if run(python(&deps).args(["-c", probe]), "python3")
        .status
        .success()
    {
        return deps;
    }
    let out = run(
        python(&deps)
            .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
            .arg(&deps)
            .args(["grpcio-tools", "grpcio-reflection"]),
        "python3 -m pip",
    );
    assert!(
        out.status.success(),
        "grpcio-tools / grpcio-reflection are missing and pip could not install them; {PIP_HINT}\n{}",
        show(&out)
    );
    let out = run(python(&deps).args(["-c", probe]), "python3");
    assert!(
        out.status.success(),
        "grpcio-tools / grpcio-reflection still not importable after pip; {PIP_HINT}\n{}",
        show(&out)
    );
    deps
}

/// Generates the Python client from proto/ into `out`.
fn generate_client(deps: &Path, out: &Path) {
    let proto = repo_root().join("proto");
    let mut cmd = python(deps);
    cmd.args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()));
    for name in ["common", "admin", "produce", "fetch", "group"] {
        cmd.arg(proto.join(format!("runnel/v1/{name}.proto")));
    }
    let result = run(&mut cmd, "grpc_tools.protoc");
    assert!(result.status.success(), "protoc failed: {}", show(&result));
    for name in [
        "admin_pb2.py",
        "admin_pb2_grpc.py",
        "produce_pb2_grpc.py",
        "fetch_pb2_grpc.py",
        "group_pb2_grpc.py",
    ] {
        let f = out.join("runnel/v1").join(name);
        assert!(f.is_file(), "protoc did not write {}", f.display());
    }
}

#[tokio::test]
async fn python_client_generated_from_proto_produces_fetches_lists_offsets_and_reflects() {
    with_deadline(Duration::from_secs(300), async {
        let deps = ensure_python_deps();
        let generated = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        generate_client(&deps, generated.path());

        let broker = Broker::start(BrokerOptions::flush("never"));
        let script = repo_root().join("tests/python/runnel_smoke.py");
        let mut cmd = python(&deps);
        let mut path = generated.path().as_os_str().to_owned();
        path.push(":");
        path.push(deps.as_os_str());
        cmd.env("PYTHONPATH", path)
            .arg(&script)
            .arg(broker.grpc_addr().to_string())
            .arg("from-python");
        let out = tokio::task::spawn_blocking(move || run(&mut cmd, "the Python client"))
            .await
            .unwrap_or_else(|e| panic!("python runner: {e}"));
        assert!(
            out.status.success(),
            "the Python client failed: {}\nbroker stderr:\n{}",
            show(&out),
            broker.stderr()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("the script's output is not JSON ({e}): {stdout}"));

        // Keyed records the broker placed for Python follow the same
        // partitioner as the Rust client.
        let placed = v["placed"]
            .as_object()
            .unwrap_or_else(|| panic!("no placement: {v}"));
        assert_eq!(placed.len(), 20);
        for (key, p) in placed {
            assert_eq!(
                p.as_u64(),
                Some(u64::from(partition_for_key(key.as_bytes(), 2))),
                "key {key} placed for the Python client"
            );
        }
        let services: Vec<&str> = v["services"]
            .as_array()
            .unwrap_or_else(|| panic!("no services: {v}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for want in [
            "runnel.v1.AdminService",
            "runnel.v1.FetchService",
            "runnel.v1.ProduceService",
            "runnel.v1.GroupService",
        ] {
            assert!(
                services.contains(&want),
                "reflection lists {services:?}, not {want}"
            );
        }

        // What Python wrote, Rust reads identically.
        let mut c = support::grpc::Clients::connect(broker.grpc_addr()).await;
        let base = v["base_offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no base offset: {v}"));
        let records = c.fetch_decoded("from-python", 1, base).await;
        let values: Vec<String> = records
            .iter()
            .take(10)
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect();
        let want: Vec<String> = (0..10).map(|i| format!("py-{i}")).collect();
        assert_eq!(values, want);

        // The Python member's commit is the group's committed offset.
        let out = broker.cli_ok(&["group", "describe", "py-group", "--output", "json"], "");
        let d: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("describe is not JSON ({e}): {out}"));
        assert_eq!(d["state"], "Empty", "{d}");
        assert_eq!(d["offsets"][0]["partition"], 1, "{d}");
        assert_eq!(
            d["offsets"][0]["committed"], v["group_committed"],
            "{d} vs {v}"
        );
    })
    .await;
}
