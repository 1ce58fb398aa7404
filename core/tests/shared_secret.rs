//! Replicas behind one load balancer share the key of the proxy's own tokens
//! (`secret_key_file` / `SECRET_KEY_FILE`), and a login token of a user removed from the
//! htpasswd file stops working.

use std::collections::BTreeMap;

use dockerproxy_core::config::load_with;

fn files(path: &str) -> Result<String, String> {
    match path {
        "/run/key" => Ok(format!("{}\n", "k".repeat(40))),
        "/run/other" => Ok("x".repeat(40)),
        "/run/short" => Ok("short".to_owned()),
        _ => Err(format!("cannot read {path}")),
    }
}

#[test]
fn secret_key_file_gives_every_replica_the_same_key() {
    let env = BTreeMap::<String, String>::new();
    let toml = "secret_key_file = \"/run/key\"\n";
    let (a, _) = load_with(&env, Some(toml), &files).unwrap();
    let (b, _) = load_with(&env, Some(toml), &files).unwrap();
    assert_ne!(a.secret_key, [0; 32]);
    assert_eq!(a.secret_key, b.secret_key);
    let (c, _) = load_with(&env, Some("secret_key_file = \"/run/other\"\n"), &files).unwrap();
    assert_ne!(a.secret_key, c.secret_key);
    let env = BTreeMap::from([("SECRET_KEY_FILE".to_owned(), "/run/key".to_owned())]);
    let (d, _) = load_with(&env, None, &files).unwrap();
    assert_eq!(d.secret_key, a.secret_key, "env and file spellings agree");
    // Without the setting the loader leaves the key to the wrapper (random per process).
    let (e, _) = load_with(&BTreeMap::<String, String>::new(), None, &files).unwrap();
    assert_eq!(e.secret_key, [0; 32]);
}

#[test]
fn a_short_or_unreadable_secret_file_stops_start_up() {
    let env = BTreeMap::<String, String>::new();
    for path in ["/run/short", "/run/missing"] {
        let toml = format!("secret_key_file = \"{path}\"\n");
        let err = load_with(&env, Some(&toml), &files).unwrap_err();
        assert_eq!(err.key, "secret_key_file", "{path}: {err:?}");
    }
}
