//! Pure: the secured nats-server configurations `muster security init` writes (single node and one node of a
//! 3-node cluster). They take the same environment variables as the repository's `nats/single.conf` and
//! `nats/cluster.conf`, and add: decentralized JWT authentication (the operator, the system account, the `full`
//! account resolver preloaded with the SYS and MUSTER account JWTs) and TLS on client and route connections.

use std::fmt::Write as _;
use std::path::PathBuf;

/// What the configurations refer to: files of the security directory (absolute paths) and the account JWTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfigInputs {
    /// The operator JWT file.
    pub operator_jwt: PathBuf,
    /// The system account's public key.
    pub system_account: String,
    /// Account JWTs nats-server starts with (public key, JWT): SYS and MUSTER.
    pub preload: Vec<(String, String)>,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The nats-server certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// A path as a quoted configuration string.
fn quoted(path: &std::path::Path) -> String {
    // JSON string escaping is what the nats-server config parser reads inside double quotes.
    serde_json::to_string(&path.to_string_lossy()).unwrap_or_else(|_| String::from("\"\""))
}

fn tls_block(i: &ServerConfigInputs, indent: &str) -> String {
    format!(
        "{indent}tls {{\n{indent}    cert_file: {}\n{indent}    key_file: {}\n{indent}    ca_file: {}\n\
         {indent}    timeout: 2\n{indent}}}\n",
        quoted(&i.cert),
        quoted(&i.key),
        quoted(&i.ca)
    )
}

/// The trust part both variants share: operator, system account, resolver, preload.
fn trust(i: &ServerConfigInputs) -> String {
    let mut out = String::new();
    out.push_str(
        "# Decentralized JWT authentication: every client presents a user JWT signed (through a scoped signing key)\n\
         # by an account the operator signed. Agents joining need no change here: the MUSTER account's scoped\n\
         # signing keys carry each role's permissions, a user JWT only its name.\n",
    );
    let _ = writeln!(out, "operator: {}", quoted(&i.operator_jwt));
    let _ = writeln!(out, "system_account: {}\n", i.system_account);
    out.push_str(
        "# The `full` resolver keeps every account JWT in a directory and accepts updates pushed on\n\
         # $SYS.REQ.CLAIMS.UPDATE (that is how `muster creds revoke` takes effect without a restart); the nodes of a\n\
         # cluster share updates. nats-server reads config variables only as whole values, so the directory is the\n\
         # node's store directory (its account files `A….jwt` sit beside JetStream's `jetstream/`).\n\
         resolver: {\n    type: full\n    dir: $MUSTER_NATS_STORE_DIR\n    allow_delete: false\n    interval: \"2m\"\n}\n\n\
         # The accounts a fresh node starts with (a stored newer JWT, e.g. with revocations, wins).\n\
         resolver_preload: {\n",
    );
    for (key, jwt) in &i.preload {
        let _ = writeln!(out, "    {key}: {jwt}");
    }
    out.push_str("}\n\n");
    out
}

const JETSTREAM: &str = "jetstream {\n    # Unset, nats-server stops with \"variable reference ... can not be found\".\n    \
store_dir: $MUSTER_NATS_STORE_DIR\n    # fsync before acknowledging: an acked txn must survive losing the machine.\n    \
sync_interval: always\n}\n";

/// The single-node configuration (`nats-single.conf`): `MUSTER_NATS_STORE_DIR` as for `nats/single.conf`.
pub fn single(i: &ServerConfigInputs) -> String {
    let mut out = String::from(
        "# Secured single-node nats-server, written by `muster security init`.\n#\n\
         #   MUSTER_NATS_STORE_DIR=/var/lib/muster/nats nats-server -c nats-single.conf\n#\n\
         # Every connection is authenticated (JWT) and encrypted (TLS), so it may listen beyond loopback.\n\n\
         listen: 0.0.0.0:4222\n\n\
         # The monitoring endpoint has no authentication: loopback only.\nhttp: 127.0.0.1:8222\n\n\
         server_name: muster-single\n\n",
    );
    out.push_str(&trust(i));
    out.push_str("# Clients must use TLS and verify this server against the CA (MUSTER_NATS_CA).\n");
    out.push_str(&tls_block(i, ""));
    out.push('\n');
    out.push_str(JETSTREAM);
    out
}

/// One node of a 3-node cluster (`nats-cluster.conf`): the variables of `nats/cluster.conf` (`MUSTER_NATS_NAME`,
/// `MUSTER_NATS_PORT`, `MUSTER_NATS_CLUSTER_PORT`, `MUSTER_NATS_ROUTE_A/B`, `MUSTER_NATS_STORE_DIR`). Routes use
/// TLS too; nats-server verifies route peers both ways, so only a node holding a certificate of the CA joins.
pub fn cluster(i: &ServerConfigInputs) -> String {
    let mut out = String::from(
        "# One node of a secured 3-node nats-server cluster, written by `muster security init`. Every node uses this\n\
         # file; what differs comes from the environment, as for nats/cluster.conf:\n#\n\
         #   MUSTER_NATS_NAME          node name, unique in the cluster (e.g. n1)\n\
         #   MUSTER_NATS_PORT          client port\n\
         #   MUSTER_NATS_CLUSTER_PORT  route port\n\
         #   MUSTER_NATS_ROUTE_A/B     the other two nodes' routes, e.g. nats-route://10.0.0.2:6222\n\
         #   MUSTER_NATS_STORE_DIR     JetStream store (and account JWT) directory, one per node\n\n\
         server_name: $MUSTER_NATS_NAME\n\n\
         host: 0.0.0.0\nport: $MUSTER_NATS_PORT\n\n",
    );
    out.push_str(&trust(i));
    out.push_str(&tls_block(i, ""));
    out.push('\n');
    out.push_str(JETSTREAM);
    out.push_str(
        "\ncluster {\n    # The same name on every node: JetStream's meta group forms inside one named cluster.\n    \
         name: muster\n    host: 0.0.0.0\n    port: $MUSTER_NATS_CLUSTER_PORT\n    routes: [\n        \
         $MUSTER_NATS_ROUTE_A\n        $MUSTER_NATS_ROUTE_B\n    ]\n",
    );
    out.push_str(&tls_block(i, "    "));
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ServerConfigInputs {
        ServerConfigInputs {
            operator_jwt: "/s/operator.jwt".into(),
            system_account: "ASYS".into(),
            preload: vec![("ASYS".into(), "j.w.t".into()), ("AMUSTER".into(), "k.w.t".into())],
            ca: "/s/ca.pem".into(),
            cert: "/s/nats-server.pem".into(),
            key: "/s/nats-server-key.pem".into(),
        }
    }

    #[test]
    fn single_node_has_trust_tls_and_the_store_variable() {
        let c = single(&inputs());
        for want in [
            "operator: \"/s/operator.jwt\"",
            "system_account: ASYS",
            "type: full",
            "allow_delete: false",
            "    AMUSTER: k.w.t",
            "ca_file: \"/s/ca.pem\"",
            "store_dir: $MUSTER_NATS_STORE_DIR",
            "sync_interval: always",
        ] {
            assert!(c.contains(want), "{want} missing from\n{c}");
        }
    }

    #[test]
    fn cluster_node_uses_the_cluster_variables_and_route_tls() {
        let c = cluster(&inputs());
        for var in ["NAME", "PORT", "CLUSTER_PORT", "ROUTE_A", "ROUTE_B", "STORE_DIR"] {
            assert!(c.contains(&format!("$MUSTER_NATS_{var}")), "{var}");
        }
        let routes = &c[c.find("cluster {").unwrap()..];
        assert!(routes.contains("    tls {"));
    }
}
