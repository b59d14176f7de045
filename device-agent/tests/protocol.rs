//! The wire format, byte for byte: what the harness sends and what it reads back.

use device_agent::protocol::*;
use serde_json::{json, Value};

fn refused(line: &[u8]) -> (Option<Value>, ErrorReply) {
    let e = decode_request(line).expect_err("request should be refused");
    (e.id, e.error)
}

#[test]
fn decodes_every_command_from_bytes() {
    let cases: &[(&[u8], &str)] = &[
        (b"{\"cmd\":\"hello\"}\n", "hello"),
        (b"{\"cmd\":\"clock\",\"proto\":1}", "clock"),
        (b"  {\"cmd\":\"quit\"}  \r\n", "quit"),
        (b"{\"cmd\":\"run\"}", "run"),
        (b"{\"cmd\":\"switch\",\"variant\":\"pp75\"}", "switch"),
        (b"{\"cmd\":\"selftest\"}", "selftest"),
        (
            b"{\"cmd\":\"load\",\"model\":{\"preset\":\"rt3-transformer\",\"seq\":8},\"variants\":[{\"kind\":\"dense\",\"name\":\"d\"}]}",
            "load",
        ),
    ];
    for (line, name) in cases {
        let req = decode_request(line).unwrap_or_else(|e| panic!("{}: {:?}", String::from_utf8_lossy(line), e));
        assert_eq!(req.command.name(), *name);
    }
}

#[test]
fn run_defaults_and_explicit_values() {
    let req = decode_request(b"{\"cmd\":\"run\"}").unwrap();
    assert_eq!(req.command, Command::Run(RunRequest::default()));
    assert_eq!(req.proto, None);
    let req = decode_request(
        br#"{"id":"w1","proto":1,"cmd":"run","variant":"pp75","warmup":0,"min_iters":50,"min_ms":2000,"input_seed":9}"#,
    )
    .unwrap();
    assert_eq!(req.id, Some(json!("w1")));
    assert_eq!(req.proto, Some(1));
    assert_eq!(
        req.command,
        Command::Run(RunRequest {
            variant: Some("pp75".into()),
            warmup: 0,
            min_iters: 50,
            min_ms: 2000,
            input_seed: 9,
            max_ms: None,
        })
    );
}

#[test]
fn load_decodes_all_variant_kinds_with_defaults() {
    let req = decode_request(
        br#"{"cmd":"load","model":{"preset":"distilbert","seed":3},"variants":[
            {"kind":"dense","name":"dense"},
            {"kind":"block","name":"bp64","sparsity":0.64},
            {"kind":"pattern","name":"pp75","base":"bp64","tile":16,"sparsity":0.75,"method":"frequent_top_k"}]}"#,
    )
    .unwrap();
    let Command::Load(load) = req.command else { panic!("not a load") };
    assert_eq!(
        load.model,
        ModelSpec { preset: "distilbert".into(), seed: 3, seq: None, safetensors: None, lm_head: false }
    );
    assert_eq!(
        load.variants[1],
        VariantSpecWire::Block {
            name: "bp64".into(),
            sparsity: 0.64,
            block_rows: 32,
            block_cols: 1,
            per_layer: None,
            global: false
        }
    );
    assert_eq!(
        load.variants[2],
        VariantSpecWire::Pattern {
            name: "pp75".into(),
            base: "bp64".into(),
            tile: 16,
            patterns_per_set: 4,
            sparsity: 0.75,
            method: PatternMethod::FrequentTopK,
            seed: 0
        }
    );
}

#[test]
fn garbage_is_malformed_and_says_what_it_saw() {
    let (id, e) = refused(b"hello agent\n");
    assert_eq!(id, None);
    assert_eq!(e.kind, ErrorKind::Malformed);
    assert!(e.error.contains("not valid JSON") && e.error.contains("hello agent"), "{}", e.error);

    let (_, e) = refused(b"[1,2]");
    assert_eq!(e.kind, ErrorKind::Malformed);
    assert!(e.error.contains("got an array"), "{}", e.error);

    let (_, e) = refused(b"{\"cmd\":\"hello\"");
    assert_eq!(e.kind, ErrorKind::Malformed);

    let (_, e) = refused(b"{\"cmd\":\"hel\xfflo\"}");
    assert_eq!(e.kind, ErrorKind::Malformed);
    assert!(e.error.contains("not UTF-8"), "{}", e.error);
}

#[test]
fn unknown_or_missing_cmd_lists_the_known_ones_and_keeps_the_id() {
    let (id, e) = refused(br#"{"id":42,"cmd":"swtich"}"#);
    assert_eq!(id, Some(json!(42)));
    assert_eq!(e.kind, ErrorKind::UnknownCommand);
    assert!(e.error.contains("`swtich`") && e.error.contains("switch"), "{}", e.error);
    assert_eq!(e.cmd.as_deref(), Some("swtich"));

    let (id, e) = refused(br#"{"id":"x","variant":"a"}"#);
    assert_eq!(id, Some(json!("x")));
    assert_eq!(e.kind, ErrorKind::UnknownCommand);
    assert!(e.error.contains("no \"cmd\""), "{}", e.error);

    let (_, e) = refused(br#"{"cmd":7}"#);
    assert_eq!(e.kind, ErrorKind::UnknownCommand);
}

#[test]
fn proto_mismatch_names_both_versions() {
    let (id, e) = refused(br#"{"id":1,"proto":2,"cmd":"hello"}"#);
    assert_eq!(id, Some(json!(1)));
    assert_eq!(e.kind, ErrorKind::ProtoMismatch);
    assert!(e.error.contains("proto 2") && e.error.contains(&format!("proto {PROTO_VERSION}")), "{}", e.error);

    let (_, e) = refused(br#"{"proto":"one","cmd":"hello"}"#);
    assert_eq!(e.kind, ErrorKind::BadParams);
    assert!(e.error.contains("\"proto\""), "{}", e.error);
}

#[test]
fn bad_params_name_the_field() {
    let (_, e) = refused(br#"{"cmd":"switch"}"#);
    assert_eq!(e.kind, ErrorKind::BadParams);
    assert!(e.error.contains("`switch`") && e.error.contains("variant"), "{}", e.error);

    let (_, e) = refused(br#"{"cmd":"run","min_iter":5}"#);
    assert!(e.error.contains("min_iter"), "typo must be caught: {}", e.error);

    let (_, e) = refused(br#"{"cmd":"run","min_iters":-1}"#);
    assert_eq!(e.kind, ErrorKind::BadParams);
    assert!(e.error.contains("-1"), "{}", e.error);

    let (_, e) = refused(br#"{"cmd":"hello","verbose":true}"#);
    assert!(e.error.contains("verbose"), "{}", e.error);

    let (_, e) = refused(br#"{"cmd":"load","model":{"preset":"minilm"},"variants":[{"kind":"sparse","name":"x"}]}"#);
    assert!(e.error.contains("sparse"), "{}", e.error);

    let (_, e) = refused(br#"{"cmd":"load","model":{"preset":"minilm"},"variants":[{"kind":"block","name":"b"}]}"#);
    assert!(e.error.contains("sparsity"), "{}", e.error);
}

#[test]
fn requests_encode_with_envelope_first_and_round_trip() {
    let req = Request::new(Command::Switch(SwitchRequest::hot("pp87"))).with_id(5);
    let line = encode_line(&req);
    assert_eq!(line, b"{\"id\":5,\"proto\":1,\"cmd\":\"switch\",\"variant\":\"pp87\"}\n");
    assert_eq!(decode_request(&line).unwrap(), req);

    for command in [
        Command::Hello,
        Command::Clock,
        Command::Quit,
        Command::Run(RunRequest { variant: None, warmup: 1, min_iters: 2, min_ms: 3, input_seed: 4, max_ms: Some(5) }),
        Command::Selftest(SelftestRequest { tokens: 2, input_seed: 1 }),
        Command::Load(LoadRequest {
            model: ModelSpec {
                preset: "rt3-transformer".into(),
                seed: 1,
                seq: Some(8),
                safetensors: Some("/m.st".into()),
                lm_head: true,
            },
            variants: vec![
                VariantSpecWire::Dense { name: "d".into() },
                VariantSpecWire::Pattern {
                    name: "p".into(),
                    base: "d".into(),
                    tile: 8,
                    patterns_per_set: 2,
                    sparsity: 0.5,
                    method: PatternMethod::Rt3TileSums,
                    seed: 9,
                },
            ],
            residency: ResidencyWire::OneSet,
        }),
        Command::Switch(SwitchRequest { variant: "p".into(), mode: SwitchMode::Cold, probe: 5, input_seed: 3 }),
        Command::Fidelity(FidelityRequest { inputs: 3, input_seed: 8 }),
    ] {
        let req = Request::new(command);
        let line = encode_line(&req);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "exactly one line");
        assert_eq!(decode_request(&line).unwrap(), req);
        // The serde impls agree with the codec functions.
        let via_serde: Request = serde_json::from_slice(&line).unwrap();
        assert_eq!(via_serde, req);
    }
}

#[test]
fn replies_encode_ok_id_proto_cmd_then_fields() {
    let resp = Response::ok(Some(json!(3)), Reply::Clock(ClockReply { mono_ns: 123 }));
    assert_eq!(encode_line(&resp), b"{\"ok\":true,\"id\":3,\"proto\":1,\"cmd\":\"clock\",\"mono_ns\":123}\n");

    let resp = Response::error(
        None,
        ErrorReply { cmd: Some("run".into()), kind: ErrorKind::NotLoaded, error: "no model loaded".into() },
    );
    assert_eq!(
        encode_line(&resp),
        b"{\"ok\":false,\"proto\":1,\"cmd\":\"run\",\"kind\":\"not_loaded\",\"error\":\"no model loaded\"}\n"
    );
    assert_eq!(encode_line(&Response::ok(None, Reply::Quit)), b"{\"ok\":true,\"proto\":1,\"cmd\":\"quit\"}\n");
}

#[test]
fn replies_round_trip_and_expect_checks_the_type() {
    let run = RunReply {
        variant: "pp75".into(),
        warmup: 3,
        iterations: 3,
        window_start_ns: 1_000,
        window_end_ns: 4_500,
        latencies_ns: vec![1_000, 1_100, 1_200],
        checksum: "00ff00ff00ff00ff".into(),
        outputs_consistent: true,
        capped: false,
        time_capped: false,
        note: None,
        input_seed: 1,
        threads: 1,
        sim_stretch_factor: Some(2.5),
        cpu_time_ns: Some(3_400),
    };
    let line = encode_line(&Response::ok(Some(json!("r")), Reply::Run(run.clone())));
    let back = decode_response(&line).unwrap();
    assert_eq!(back.id, Some(json!("r")));
    assert_eq!(back.proto, PROTO_VERSION);
    assert_eq!(back.clone().expect::<RunReply>().unwrap(), run);
    assert_eq!(run.window_ns(), 3_500);
    assert_eq!(back.expect::<SwitchReply>().unwrap_err(), ReplyError::Unexpected { expected: "switch", got: "run" });

    let err_line = b"{\"ok\":false,\"proto\":1,\"kind\":\"malformed\",\"error\":\"bad\"}\n";
    let e = decode_response(err_line).unwrap().expect::<HelloReply>().unwrap_err();
    assert!(matches!(e, ReplyError::Refused(ErrorReply { kind: ErrorKind::Malformed, .. })), "{e:?}");
    assert!(decode_response(b"{\"ok\":true,\"proto\":1,\"cmd\":\"quit\"}").unwrap().expect::<QuitReply>().is_ok());
}

#[test]
fn nan_travels_as_null_and_comes_back_as_nan() {
    let reply = SelftestReply {
        passed: false,
        tokens: 4,
        results: vec![SelftestResult {
            variant: "x".into(),
            max_abs_err: f64::NAN,
            max_rel_err: 0.5,
            worst: "forward".into(),
            checks: 13,
            passed: false,
        }],
    };
    let line = encode_line(&Response::ok(None, Reply::Selftest(reply)));
    let text = String::from_utf8(line.clone()).unwrap();
    assert!(text.contains("\"max_abs_err\":null"), "{text}");
    let back = decode_response(&line).unwrap().expect::<SelftestReply>().unwrap();
    assert!(back.results[0].max_abs_err.is_nan());
    assert_eq!(back.results[0].max_rel_err, 0.5);
}

#[test]
fn reply_decoding_ignores_new_fields_but_needs_ok_and_proto() {
    let line = br#"{"ok":true,"proto":1,"cmd":"clock","mono_ns":5,"added_later":true}"#;
    assert_eq!(decode_response(line).unwrap().expect::<ClockReply>().unwrap().mono_ns, 5);
    let e = decode_response(br#"{"proto":1,"cmd":"clock","mono_ns":5}"#).unwrap_err();
    assert!(e.to_string().contains("\"ok\""), "{e}");
    let e = decode_response(br#"{"ok":true,"cmd":"clock","mono_ns":5}"#).unwrap_err();
    assert!(e.to_string().contains("\"proto\""), "{e}");
    let e = decode_response(b"garbage").unwrap_err();
    assert!(matches!(e, DecodeError::Json { .. }), "{e}");
}

#[test]
fn line_reader_handles_crlf_partial_last_line_and_limits() {
    let mut input: &[u8] = b"a\r\nbb\n\nlong-line\nlast";
    let mut buf = Vec::new();
    assert_eq!(read_request_line(&mut input, &mut buf, 4).unwrap(), LineRead::Line);
    assert_eq!(buf, b"a");
    assert_eq!(read_request_line(&mut input, &mut buf, 4).unwrap(), LineRead::Line);
    assert_eq!(buf, b"bb");
    assert_eq!(read_request_line(&mut input, &mut buf, 4).unwrap(), LineRead::Line);
    assert_eq!(buf, b"");
    assert_eq!(read_request_line(&mut input, &mut buf, 4).unwrap(), LineRead::TooLong(9));
    assert_eq!(read_request_line(&mut input, &mut buf, 4).unwrap(), LineRead::Line);
    assert_eq!(buf, b"last");
    assert_eq!(read_request_line(&mut input, &mut buf, 4).unwrap(), LineRead::Eof);
}

#[test]
fn line_reader_joins_a_line_split_across_reads() {
    // A BufReader with a 3-byte buffer hands the line over in pieces.
    let data: &[u8] = b"{\"cmd\":\"clock\"}\n";
    let mut reader = std::io::BufReader::with_capacity(3, data);
    let mut buf = Vec::new();
    assert_eq!(read_request_line(&mut reader, &mut buf, 1024).unwrap(), LineRead::Line);
    assert_eq!(decode_request(&buf).unwrap().command, Command::Clock);
}
