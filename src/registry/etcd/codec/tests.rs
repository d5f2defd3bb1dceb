//! Golden keys and values (the exact bytes the Go registries write, from the sources cited in
//! REGISTRIES.md) and the tolerant reading of what others write.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

fn reg(addr: &str, weight: u32, tags: &[(&str, &str)]) -> Registration {
    Registration {
        service: "echo".into(),
        address: addr.parse().unwrap(),
        weight,
        tags: Tags::new(
            tags.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ttl: Duration::from_secs(10),
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

fn hertz() -> Codec {
    Codec::new(EtcdLayout::Hertz, "hertz/registry-etcd")
}
fn kitex() -> Codec {
    Codec::new(EtcdLayout::Kitex, "kitex/registry-etcd")
}
fn grpc(prefix: &str) -> Codec {
    Codec::new(EtcdLayout::Grpc, prefix)
}

#[test]
fn golden_keys() {
    let a: SocketAddr = "10.0.0.7:8888".parse().unwrap();
    assert_eq!(
        hertz().key("echo", a),
        "hertz/registry-etcd/echo/10.0.0.7:8888"
    );
    assert_eq!(
        kitex().key("echo", a),
        "kitex/registry-etcd/echo/10.0.0.7:8888"
    );
    // The deprecated Kitex constructors leave the prefix empty.
    assert_eq!(
        Codec::new(EtcdLayout::Kitex, "").key("echo", a),
        "/echo/10.0.0.7:8888"
    );
    assert_eq!(
        Codec::new(EtcdLayout::Kitex, "shop").key("echo", a),
        "shop/echo/10.0.0.7:8888"
    );
    // grpc-go: `<target>/<addr>`, the target being `etcd:///foo/bar/echo`'s path.
    assert_eq!(grpc("").key("echo", a), "echo/10.0.0.7:8888");
    assert_eq!(grpc("foo/bar").key("echo", a), "foo/bar/echo/10.0.0.7:8888");
    // IPv6 as net.JoinHostPort writes it.
    assert_eq!(
        hertz().key("echo", "[fd00::7]:8888".parse().unwrap()),
        "hertz/registry-etcd/echo/[fd00::7]:8888"
    );
    // The trailing slash keeps `echo` from reading `echo2`.
    assert_eq!(hertz().service_prefix("echo"), "hertz/registry-etcd/echo/");
    assert!(!hertz()
        .key("echo2", a)
        .starts_with(&hertz().service_prefix("echo")));
}

#[test]
fn golden_values() {
    // kitex-contrib/registry-etcd: encoding/json of instanceInfo with a nil Tags map.
    assert_eq!(
        text(kitex().encode(&reg("10.0.0.7:8888", 10, &[]))),
        r#"{"network":"tcp","address":"10.0.0.7:8888","weight":10,"tags":null}"#
    );
    assert_eq!(
        text(hertz().encode(&reg("10.0.0.7:8888", 3, &[("zone", "a"), ("env", "prod")]))),
        r#"{"network":"tcp","address":"10.0.0.7:8888","weight":3,"tags":{"env":"prod","zone":"a"}}"#
    );
    assert_eq!(
        text(hertz().encode(&reg("[::1]:8888", 10, &[]))),
        r#"{"network":"tcp","address":"[::1]:8888","weight":10,"tags":null}"#
    );
    // grpc-go's endpoints manager: Update{Op: Add, Addr, Metadata: nil}.
    assert_eq!(
        text(grpc("").encode(&reg("10.0.0.5:50051", 10, &[]))),
        r#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}"#
    );
    assert_eq!(
        text(grpc("").encode(&reg("10.0.0.5:50051", 3, &[("zone", "a")]))),
        r#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":{"tags":{"zone":"a"},"weight":3}}"#
    );
    assert_eq!(
        text(grpc("").encode(&reg("10.0.0.5:50051", 2, &[]))),
        r#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":{"weight":2}}"#
    );
}

#[test]
fn weight_zero_is_never_written() {
    for codec in [hertz(), kitex()] {
        let v = text(codec.encode(&reg("10.0.0.7:8888", 0, &[])));
        assert!(v.contains(r#""weight":1,"#), "{v}");
    }
    let v = text(grpc("").encode(&reg("10.0.0.7:8888", 0, &[])));
    assert!(v.contains(r#""weight":1}"#), "{v}");
}

#[test]
fn strings_are_escaped_as_each_go_encoder_does() {
    let tags = [("note", "a<b>&\"c\"\\\n\u{2028}\u{1}")];
    // encoding/json (Kitex, grpc-go) escapes HTML characters and the JS line separators.
    assert_eq!(
        text(kitex().encode(&reg("10.0.0.7:8888", 10, &tags))),
        r#"{"network":"tcp","address":"10.0.0.7:8888","weight":10,"tags":{"note":"a\u003cb\u003e\u0026\"c\"\\\n\u2028\u0001"}}"#
    );
    // sonic's default configuration (Hertz) does not.
    assert_eq!(
        text(hertz().encode(&reg("10.0.0.7:8888", 10, &tags))),
        "{\"network\":\"tcp\",\"address\":\"10.0.0.7:8888\",\"weight\":10,\"tags\":{\"note\":\"a<b>&\\\"c\\\"\\\\\\n\u{2028}\\u0001\"}}"
    );
    // Whatever the escaping, the value reads back to the same tags.
    for codec in [hertz(), kitex(), grpc("")] {
        let r = reg("10.0.0.7:8888", 4, &tags);
        let i = codec.decode(&codec.encode(&r)).unwrap();
        assert_eq!(i.tags, r.tags, "{codec:?}");
    }
}

#[test]
fn every_layout_reads_back_what_it_writes() {
    for codec in [hertz(), kitex(), grpc(""), grpc("a/b")] {
        for r in [
            reg("10.0.0.7:8888", 7, &[("zone", "b")]),
            reg("[fd00::1]:80", 10, &[]),
            reg("127.0.0.1:1", 1, &[("k", "")]),
        ] {
            let i = codec.decode(&codec.encode(&r)).unwrap();
            assert_eq!(
                (i.address, i.weight, &i.tags),
                (r.address, r.weight, &r.tags),
                "{codec:?}"
            );
        }
    }
}

#[test]
fn reads_values_as_the_go_writers_put_them() {
    let i = kitex()
        .decode(br#"{"network":"tcp","address":"10.0.0.7:8888","weight":10,"tags":null}"#)
        .unwrap();
    assert_eq!(i.address, "10.0.0.7:8888".parse().unwrap());
    assert_eq!(i.weight, 10);
    assert!(i.tags.is_empty());
    // Kitex's bracket-less IPv6.
    let i = kitex()
        .decode(br#"{"network":"tcp","address":"fd00::7:8888","weight":5,"tags":{}}"#)
        .unwrap();
    assert_eq!(i.address, "[fd00::7]:8888".parse().unwrap());
    // Fields Go would leave at zero may be absent; weight 0 and below read as 10.
    for v in [
        &br#"{"address":"10.0.0.7:1"}"#[..],
        br#"{"address":"10.0.0.7:1","weight":0}"#,
        br#"{"address":"10.0.0.7:1","weight":-3,"tags":null}"#,
        br#"{"network":"","address":"10.0.0.7:1","weight":0}"#,
    ] {
        assert_eq!(hertz().decode(v).unwrap().weight, 10);
    }
    assert_eq!(
        hertz()
            .decode(br#"{"address":"10.0.0.7:1","weight":99999999999}"#)
            .unwrap()
            .weight,
        u32::MAX
    );
    // grpc-go: every PUT is an instance, whatever its Op; Metadata is free-form.
    for v in [
        &br#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}"#[..],
        br#"{"Op":1,"Addr":"10.0.0.5:50051"}"#,
        br#"{"Addr":"10.0.0.5:50051","Metadata":"v1"}"#,
        br#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":{"weight":"heavy","tags":[1]}}"#,
    ] {
        let i = grpc("").decode(v).unwrap();
        assert_eq!(
            (i.address.port(), i.weight, i.tags.len()),
            (50051, 10, 0),
            "{}",
            String::from_utf8_lossy(v)
        );
    }
}

#[test]
fn tags_never_leak_between_values() {
    let c = hertz();
    let values: [&[u8]; 4] = [
        br#"{"address":"10.0.0.1:1","tags":{"a":"1"}}"#,
        br#"{"address":"10.0.0.2:1","tags":null}"#,
        br#"{"address":"10.0.0.3:1"}"#,
        br#"{"address":"10.0.0.4:1","tags":{"b":"2"}}"#,
    ];
    let tags: Vec<BTreeMap<String, String>> = values
        .iter()
        .map(|v| (*c.decode(v).unwrap().tags).clone())
        .collect();
    assert_eq!(tags[0].len(), 1);
    assert!(tags[1].is_empty() && tags[2].is_empty());
    assert_eq!(tags[3].keys().collect::<Vec<_>>(), ["b"]);
}

#[test]
fn unusable_values_are_errors() {
    for (codec, v) in [
        (hertz(), &b"not json"[..]),
        (hertz(), b""),
        (hertz(), br#"{"weight":10}"#),
        (hertz(), br#"{"address":"echo.local:80"}"#),
        (hertz(), br#"{"address":"0.0.0.0:80"}"#),
        (hertz(), br#"{"address":"[::]:80"}"#),
        (hertz(), br#"{"address":"10.0.0.1:0"}"#),
        (hertz(), br#"{"address":"10.0.0.1"}"#),
        (hertz(), br#"{"address":"10.0.0.1:80","weight":1.5}"#),
        (hertz(), br#"{"address":"10.0.0.1:80","tags":{"a":1}}"#),
        (kitex(), br#"{"network":"unix","address":"/run/app.sock"}"#),
        (kitex(), br#"{"network":"unix","address":"10.0.0.1:80"}"#),
        (grpc(""), br#"{"Op":0,"Metadata":null}"#),
        (grpc(""), br#"{"Op":300,"Addr":"10.0.0.1:80"}"#),
        (grpc(""), br#"{"Op":0,"Addr":"dns:///echo:80"}"#),
        // A Hertz value is not a gRPC one.
        (grpc(""), br#"{"network":"tcp","address":"10.0.0.1:80"}"#),
    ] {
        assert!(
            codec.decode(v).is_err(),
            "{codec:?} accepted {}",
            String::from_utf8_lossy(v)
        );
    }
}
