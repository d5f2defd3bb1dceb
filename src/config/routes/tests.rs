//! `routes:` and `services.<name>.routes:`: accepted, and each rule refused with its key.

use super::super::tests::{parse, rejects};

const SERVICES: &str = "services:
  shop:
    listen: 127.0.0.1:18081
    resolver:
      static:
        instances:
          - address: 127.0.0.1:9001
  users:
    resolver:
      static:
        instances:
          - address: 127.0.0.1:9002
";

#[test]
fn accepts_routes_on_both_kinds_of_listener() {
    let c = parse(&format!(
        "routes:\n  - {{prefix: /api/shop/, service: shop, strip: true}}\n  - {{prefix: /, service: users}}\n{SERVICES}  reports:\n    listen: 127.0.0.1:18082\n    routes:\n      - {{prefix: /users/, service: users}}\n    resolver: {{file: {{}}}}\n"
    ))
    .unwrap();
    assert_eq!(c.routes.len(), 2);
    assert!(c.routes[0].strip && !c.routes[1].strip);
    let reports = c
        .services
        .iter()
        .find(|(n, _)| n.as_str() == "reports")
        .unwrap()
        .1;
    assert_eq!(reports.routes[0].service.as_str(), "users");
}

#[test]
fn rejects_bad_prefixes_unknown_services_and_routes_without_a_listener() {
    rejects(
        &format!("routes:\n  - {{prefix: api/, service: shop}}\n{SERVICES}"),
        2,
        "routes.0.prefix: must start with `/`",
    );
    rejects(
        &format!("routes:\n  - {{prefix: \"/a b\", service: shop}}\n{SERVICES}"),
        2,
        "cannot appear in a path prefix",
    );
    rejects(
        &format!("routes:\n  - {{prefix: /a/, service: shop}}\n  - {{prefix: /a/, service: users}}\n{SERVICES}"),
        3,
        "routes.1.prefix: \"/a/\" is routed twice",
    );
    rejects(
        &format!("routes:\n  - {{prefix: /a/, service: nope}}\n{SERVICES}"),
        2,
        "routes.0.service: \"nope\" is not a declared service",
    );
    rejects(
        &format!("{SERVICES}  reports:\n    routes:\n      - {{prefix: /u/, service: users}}\n    resolver: {{file: {{}}}}\n"),
        14,
        "services.reports.routes: routes belong to a listener",
    );
}
