//! Writes the CRD YAML of every bpfleet resource. `cargo run -p crds --bin crdgen`
//! regenerates `charts/bpfleet/crds/`; a test fails when the committed files are stale.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/bpfleet/crds"));
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in crds::crdgen::render_all()? {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    let files = dir.join("../files");
    std::fs::create_dir_all(&files)?;
    let policy = files.join("admission-policy.yaml");
    std::fs::write(&policy, crds::crdgen::render_admission_policy()?)?;
    println!("wrote {}", policy.display());
    Ok(())
}
