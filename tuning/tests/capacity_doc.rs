//! CAPACITY.md's `roomcast-tune plan` examples are what `plan` prints (on a host with 4 KiB pages
//! and enough RAM for no warning about it), so they follow the costs in `src/costs.rs`.

use roomcast_tuning::plan::{plan, Load};

/// The load of a `roomcast-tune plan ...` command line, with the CLI's defaults.
fn load_of(command: &str) -> Load {
    let mut load = Load {
        connections: 0,
        rooms: 1,
        msgs_per_sec: 0.0,
        tick_ms: 100,
        payload_bytes: 128,
        boxes: 1,
        max_msgs_per_tick: None,
    };
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(&words[..2], ["roomcast-tune", "plan"], "{command}");
    for pair in words[2..].chunks(2) {
        let [flag, value] = pair else {
            panic!("`{command}`: a flag without a value")
        };
        let int = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("`{command}`: {flag} {value}: {e}"))
        };
        match *flag {
            "--connections" => load.connections = int(),
            "--rooms" => load.rooms = int(),
            "--msgs-per-sec" => load.msgs_per_sec = value.parse().unwrap(),
            "--tick-ms" => load.tick_ms = int(),
            "--payload" => load.payload_bytes = int(),
            "--boxes" => load.boxes = int(),
            "--max-msgs-per-tick" => load.max_msgs_per_tick = Some(int()),
            other => panic!("`{command}`: unknown flag {other}"),
        }
    }
    load
}

#[test]
fn every_plan_example_is_what_plan_prints() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/CAPACITY.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut examples = 0;
    for block in doc.split("```text\n").skip(1) {
        let block = &block[..block.find("```").expect("a closed code block")];
        let Some(command) = block.lines().next().and_then(|l| l.strip_prefix("$ ")) else {
            continue;
        };
        let printed = &block[block.find('\n').unwrap() + 1..];
        let mut expected = plan(load_of(command));
        expected.page_bytes = Some(4096);
        assert_eq!(
            printed,
            format!("{expected}\n"),
            "CAPACITY.md: `{command}` prints something else now; regenerate the example"
        );
        examples += 1;
    }
    assert!(
        examples >= 4,
        "only {examples} plan examples found in CAPACITY.md"
    );
}
