use std::io::Cursor;

use super::*;

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn run_spec() -> RunSpec {
    RunSpec {
        id: "web-1".into(),
        layers: vec![digest('a'), digest('b')],
        argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["A=1".into()],
        cwd: Some("/tmp".into()),
        user: Some("1000:1000".into()),
        hostname: Some("web".into()),
        limits: Limits {
            memory_bytes: Some(64 << 20),
            cpu: Some(0.5),
            pids: Some(64),
        },
        stdin: true,
    }
}

#[test]
fn frames_round_trip() {
    let mut buf = Vec::new();
    write_frame(&mut buf, Stream::Stdout, b"hello").unwrap();
    write_frame(&mut buf, Stream::Stdin, b"").unwrap();
    write_message(&mut buf, &Request::Ping).unwrap();
    assert_eq!(&buf[..HEADER_LEN], &[2, 5, 0, 0, 0]);
    let mut r = Cursor::new(buf);
    let f = read_frame(&mut r).unwrap().unwrap();
    assert_eq!((f.stream, &f.payload[..]), (Stream::Stdout, &b"hello"[..]));
    let f = read_frame(&mut r).unwrap().unwrap();
    assert_eq!((f.stream, f.payload.len()), (Stream::Stdin, 0));
    let req: Request = read_message(&mut r, "request").unwrap();
    assert_eq!(req, Request::Ping);
    assert!(read_frame(&mut r).unwrap().is_none(), "clean EOF");
}

#[test]
fn largest_frame_passes_and_larger_is_refused_both_ways() {
    let big = vec![7u8; MAX_FRAME];
    let mut buf = Vec::new();
    write_frame(&mut buf, Stream::Stdin, &big).unwrap();
    let f = read_frame(&mut Cursor::new(&buf)).unwrap().unwrap();
    assert_eq!(f.payload.len(), MAX_FRAME);

    let mut out = Vec::new();
    let err = write_frame(&mut out, Stream::Stdin, &vec![0u8; MAX_FRAME + 1]).unwrap_err();
    assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
    assert!(out.is_empty(), "nothing written");

    // A header announcing 4 GiB - 1 is refused without reading (or allocating).
    let mut hdr = vec![1u8];
    hdr.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = read_frame(&mut Cursor::new(hdr)).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { len, .. } if len == u64::from(u32::MAX)),
        "{err}"
    );
}

#[test]
fn write_data_splits_into_chunks() {
    let mut buf = Vec::new();
    write_data(&mut buf, Stream::Stdin, &vec![1u8; DATA_CHUNK * 2 + 3]).unwrap();
    let mut r = Cursor::new(buf);
    let sizes: Vec<usize> = std::iter::from_fn(|| read_frame(&mut r).unwrap())
        .map(|f| f.payload.len())
        .collect();
    assert_eq!(sizes, [DATA_CHUNK, DATA_CHUNK, 3]);
}

#[test]
fn truncated_and_unknown_frames_are_errors() {
    let err = read_frame(&mut Cursor::new(vec![0u8, 1, 0])).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Truncated {
                expected: 5,
                got: 3
            }
        ),
        "{err}"
    );
    let err = read_frame(&mut Cursor::new(vec![2u8, 10, 0, 0, 0, b'x'])).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Truncated {
                expected: 10,
                got: 1
            }
        ),
        "{err}"
    );
    let err = read_frame(&mut Cursor::new(vec![9u8, 0, 0, 0, 0])).unwrap_err();
    assert!(matches!(err, ProtocolError::UnknownStream(9)), "{err}");
}

/// A reader that hands out one byte per call (a stream in pieces).
struct Trickle(Cursor<Vec<u8>>);
impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(1);
        self.0.read(&mut buf[..n])
    }
}

#[test]
fn frames_arriving_byte_by_byte() {
    let mut buf = Vec::new();
    write_message(&mut buf, &Request::Run(run_spec())).unwrap();
    let req: Request = read_message(&mut Trickle(Cursor::new(buf)), "request").unwrap();
    assert_eq!(req, Request::Run(run_spec()));
}

#[test]
fn malformed_control_messages() {
    let cases: &[&[u8]] = &[
        b"",
        b"not json",
        b"{\"op\":\"format_disk\"}",
        b"{\"id\":\"x\"}",
        b"[1,2]",
        b"{\"op\":\"run\",\"id\":\"x\"}",
        b"{\"op\":\"put_layer\",\"diff_id\":\"x\",\"size\":-1,\"sha256\":\"y\"}",
        b"\xff\xfe",
    ];
    for c in cases {
        let frame = Frame {
            stream: Stream::Control,
            payload: c.to_vec(),
        };
        let r: Result<Request> = decode_message(&frame);
        assert!(
            matches!(r, Err(ProtocolError::Json(_))),
            "{:?} -> {r:?}",
            String::from_utf8_lossy(c)
        );
    }
    let data = Frame {
        stream: Stream::Stdin,
        payload: b"{\"op\":\"ping\"}".to_vec(),
    };
    assert!(matches!(
        decode_message::<Request>(&data),
        Err(ProtocolError::NotControl(Stream::Stdin))
    ));
    let err = read_message::<_, Request>(&mut Cursor::new(Vec::new()), "request").unwrap_err();
    assert!(matches!(err, ProtocolError::Closed("request")), "{err}");
}

#[test]
fn unknown_fields_in_specs_are_refused() {
    // A misspelt limit must not silently run a container unlimited.
    let json = br#"{"op":"run","id":"a","layers":[],"argv":["x"],"limits":{"memory":5}}"#;
    let frame = Frame {
        stream: Stream::Control,
        payload: json.to_vec(),
    };
    let err = decode_message::<Request>(&frame).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn wire_format_is_as_documented() {
    let json = serde_json::to_value(Request::Run(run_spec())).unwrap();
    assert_eq!(json["op"], "run");
    assert_eq!(json["limits"]["memory_bytes"], 64 << 20);
    let minimal: Request = serde_json::from_str(
        r#"{"op":"run","id":"c1","layers":["sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],"argv":["true"]}"#,
    )
    .unwrap();
    let Request::Run(spec) = minimal else {
        panic!("not run")
    };
    assert!(spec.stdin, "stdin defaults to true");
    assert_eq!(spec.limits, Limits::default());
    spec.validate().unwrap();

    let exited = Response::Exited(ExitStatus {
        code: None,
        signal: Some(9),
        oom_killed: true,
    });
    assert_eq!(
        serde_json::to_string(&exited).unwrap(),
        r#"{"type":"exited","signal":9,"oom_killed":true}"#
    );
    let ok = Response::Exited(ExitStatus {
        code: Some(0),
        ..Default::default()
    });
    assert_eq!(
        serde_json::to_string(&ok).unwrap(),
        r#"{"type":"exited","code":0,"oom_killed":false}"#
    );
    assert_eq!(
        serde_json::to_string(&HostControl::Signal { signal: 15 }).unwrap(),
        r#"{"op":"signal","signal":15}"#
    );
    assert_eq!(
        serde_json::to_string(&Response::SendData).unwrap(),
        r#"{"type":"send_data"}"#
    );
    assert_eq!(
        serde_json::to_string(&Request::PutLayer(PutLayer {
            diff_id: digest('a'),
            size: 5,
            sha256: digest('b')
        }))
        .unwrap(),
        format!(
            r#"{{"op":"put_layer","diff_id":"{}","size":5,"sha256":"{}"}}"#,
            digest('a'),
            digest('b')
        )
    );
}

#[test]
fn ids_are_validated() {
    for ok in ["a", "web-1", "A_b.c-9", &"x".repeat(64)] {
        validate_id(ok).unwrap();
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "a b",
        "é",
        &"x".repeat(65),
        "a\0b",
        "../x",
    ] {
        assert!(validate_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn digests_are_validated() {
    assert_eq!(digest_hex("d", &digest('f')).unwrap(), "f".repeat(64));
    for bad in [
        "sha256:".to_string(),
        format!("sha512:{}", "a".repeat(64)),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha256:{}", "a".repeat(63)),
        format!("sha256:{}", "a".repeat(65)),
        format!("sha256:{}/..", "a".repeat(61)),
        "a".repeat(64),
    ] {
        assert!(digest_hex("d", &bad).is_err(), "{bad}");
    }
}

#[test]
fn run_specs_are_validated() {
    run_spec().validate().unwrap();
    type Mutation = Box<dyn Fn(&mut RunSpec)>;
    let bad: Vec<(&str, Mutation)> = vec![
        ("id", Box::new(|s| s.id = "../etc".into())),
        ("layers", Box::new(|s| s.layers.clear())),
        (
            "layers",
            Box::new(|s| s.layers = vec![digest('a'); MAX_LAYERS + 1]),
        ),
        (
            "layers",
            Box::new(|s| s.layers = vec![digest('a'), digest('a')]),
        ),
        ("layers", Box::new(|s| s.layers[0] = "sha256:xyz".into())),
        ("argv", Box::new(|s| s.argv.clear())),
        ("argv", Box::new(|s| s.argv = vec![String::new()])),
        ("argv", Box::new(|s| s.argv.push("a\0b".into()))),
        (
            "argv",
            Box::new(|s| s.argv.push("x".repeat(MAX_STRING + 1))),
        ),
        (
            "argv",
            Box::new(|s| s.argv = vec!["x".into(); MAX_ARGS + 1]),
        ),
        ("env", Box::new(|s| s.env.push("NOEQUALS".into()))),
        ("env", Box::new(|s| s.env.push("=v".into()))),
        ("env", Box::new(|s| s.env = vec!["A=1".into(); MAX_ENV + 1])),
        ("cwd", Box::new(|s| s.cwd = Some("relative".into()))),
        ("user", Box::new(|s| s.user = Some("1:2:3".into()))),
        ("user", Box::new(|s| s.user = Some("a b".into()))),
        ("user", Box::new(|s| s.user = Some(":0".into()))),
        ("hostname", Box::new(|s| s.hostname = Some("a_b".into()))),
        ("hostname", Box::new(|s| s.hostname = Some(String::new()))),
        (
            "limits.memory_bytes",
            Box::new(|s| s.limits.memory_bytes = Some(4096)),
        ),
        ("limits.cpu", Box::new(|s| s.limits.cpu = Some(0.0))),
        ("limits.cpu", Box::new(|s| s.limits.cpu = Some(f64::NAN))),
        ("limits.pids", Box::new(|s| s.limits.pids = Some(0))),
    ];
    for (field, mutate) in bad {
        let mut s = run_spec();
        mutate(&mut s);
        match s.validate() {
            Err(ProtocolError::Invalid { field: f, .. }) => assert_eq!(f, field, "{s:?}"),
            other => panic!("{field}: {other:?}"),
        }
    }
    for user in ["0", "1000:1000", "nginx", "www-data:adm"] {
        let mut s = run_spec();
        s.user = Some(user.into());
        s.validate().unwrap();
    }
}

#[test]
fn put_layer_and_signals_are_validated() {
    let ok = PutLayer {
        diff_id: digest('a'),
        size: 1,
        sha256: digest('b'),
    };
    ok.validate().unwrap();
    assert!(PutLayer {
        size: 0,
        ..ok.clone()
    }
    .validate()
    .is_err());
    assert!(PutLayer {
        size: MAX_LAYER_SIZE + 1,
        ..ok.clone()
    }
    .validate()
    .is_err());
    assert!(PutLayer {
        sha256: "x".into(),
        ..ok
    }
    .validate()
    .is_err());
    HostControl::Signal { signal: 9 }.validate().unwrap();
    for s in [0, -1, 65] {
        assert!(HostControl::Signal { signal: s }.validate().is_err());
    }
}

#[test]
fn shorten_bounds_messages() {
    assert_eq!(shorten("ab"), "\"ab\"");
    let long = shorten(&"x".repeat(1000));
    assert!(long.len() < 90, "{long}");
}
