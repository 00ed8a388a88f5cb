//! Maps one BpfProgram uses from another (`spec.maps[].from`): the owners' uids an Apply
//! carries (the agent finds the owner's pins by uid), and the users that hold an owner's
//! deletion until they are gone.

use std::collections::BTreeMap;

use crds::BpfProgram;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

/// The uid of each program `p`'s maps come from, by name; a missing one, or `p` itself,
/// is the problem, in words naming the field.
pub async fn owners(client: &Client, p: &BpfProgram) -> Result<BTreeMap<String, String>, String> {
    let api: Api<BpfProgram> = Api::all(client.clone());
    let mut owners = BTreeMap::new();
    for (i, m) in p.spec.maps.iter().enumerate() {
        let Some(from) = &m.from else { continue };
        if from.program == p.name_any() {
            return Err(format!(
                "spec.maps[{i}].from.program: {} is this program; a map is shared with others",
                from.program
            ));
        }
        if owners.contains_key(&from.program) {
            continue;
        }
        let owner = api
            .get_opt(&from.program)
            .await
            .map_err(|e| format!("spec.maps[{i}].from.program: cannot read BpfProgram {}: {e}", from.program))?;
        let Some(owner) = owner.filter(|o| o.metadata.deletion_timestamp.is_none()) else {
            return Err(format!(
                "spec.maps[{i}].from.program: BpfProgram {} does not exist (or is being deleted): create it, or \
                 remove from; this program is applied once it exists",
                from.program
            ));
        };
        owners.insert(from.program.clone(), owner.uid().unwrap_or_default());
    }
    Ok(owners)
}

/// The programs whose `spec.maps[].from` name program `owner`, sorted. Programs being
/// deleted themselves do not count (two programs using each other's maps would otherwise
/// wait for each other forever; their kernel programs hold the maps until they go). An
/// error reading them is the caller's to retry: never taken for "no users".
pub async fn users(client: &Client, owner: &str) -> Result<Vec<String>, kube::Error> {
    let api: Api<BpfProgram> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await?;
    let mut users: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.maps.iter().any(|m| m.from.as_ref().is_some_and(|f| f.program == owner)))
        .map(|p| p.name_any())
        .collect();
    users.sort();
    Ok(users)
}

/// The condition message of an owner whose deletion waits for `users`.
pub fn in_use_message(users: &[String]) -> String {
    let shown: Vec<&str> = users.iter().take(10).map(String::as_str).collect();
    let more = users.len().saturating_sub(shown.len());
    format!(
        "deleting: waiting for BpfProgram(s) {}{} that use its maps (spec.maps[].from): delete them or remove their from",
        shown.join(", "),
        if more > 0 { format!(" and {more} more") } else { String::new() }
    )
}
