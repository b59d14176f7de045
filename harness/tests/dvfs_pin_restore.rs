//! DVFS against fake sysfs trees in temporary directories: pinning with and
//! without the userspace governor, big.LITTLE, the time_in_state fallback,
//! read-only attributes, frequencies that do not take, and restoring after
//! success, after errors and from the restore file after a crash.

mod dvfs_support;

use std::fs;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dvfs_support::sysfs::{FakeCpufreqTree, FakePolicy, FakeSysfs};
use dvfs_support::{snapshot, FakeClock, KernelLikeBoard, LEVELS};
use harness::board::local::LocalBoard;
use harness::dvfs::{
    discover_policies, read_policy, read_settings, recover_from_restore_file, residency_between, DvfsErrorKind,
    DvfsGuard, DvfsRestoreFile, FrequencySource, PinMethod, PinStrategy, Sysfs, DEFAULT_FREQ_TOLERANCE_KHZ,
};

const ALL_GOVERNORS: [&str; 6] = ["conservative", "ondemand", "userspace", "powersave", "performance", "schedutil"];
const NO_USERSPACE: [&str; 4] = ["conservative", "ondemand", "performance", "schedutil"];

struct Fixture {
    _dir: tempfile::TempDir,
    tree: FakeSysfs,
    sysfs: Sysfs,
    restore_path: String,
}

fn fixture(
    build: impl FnOnce(dvfs_support::sysfs::FakeCpufreqTreeBuilder) -> dvfs_support::sysfs::FakeCpufreqTreeBuilder,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    let tree = build(FakeCpufreqTree::builder()).write(&root).unwrap();
    let sysfs = Sysfs::new(tree.root_str(), false);
    let restore_path = dir.path().join("work/hil-dvfs-restore.json");
    fs::create_dir_all(restore_path.parent().unwrap()).unwrap();
    Fixture { sysfs, tree, restore_path: restore_path.to_string_lossy().into_owned(), _dir: dir }
}

fn single(governors: &'static [&'static str]) -> Fixture {
    fixture(|b| b.policy(&[0, 1, 2, 3], &LEVELS, governors).thermal_zone("cpu-thermal", 45_000))
}

fn no_clock() -> FakeClock<impl FnMut(Duration)> {
    FakeClock::new(|_| {})
}

#[test]
fn userspace_governor_pins_with_setspeed_and_restores() {
    let fx = single(&ALL_GOVERNORS);
    let before = snapshot(fx.tree.root());
    let mut board = KernelLikeBoard::new("rpi4");
    {
        let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
        // The restore file is on the board before anything is written.
        let saved = DvfsRestoreFile::from_json(&fs::read_to_string(&fx.restore_path).unwrap()).unwrap();
        assert_eq!(saved.policies[0].settings.governor, "schedutil");
        assert_eq!(saved.sysfs_root, fx.tree.root_str());

        let mut clock = no_clock();
        let rb = guard
            .pin_and_verify(
                0,
                1_000_000,
                PinStrategy::Auto,
                Duration::from_millis(200),
                DEFAULT_FREQ_TOLERANCE_KHZ,
                &mut clock,
            )
            .unwrap();
        assert!(rb.holds, "{rb:?}");
        assert_eq!(rb.scaling_cur_khz, 1_000_000);
        assert_eq!(rb.cpuinfo_cur_khz, Some(1_000_000));
        assert_eq!(clock.sleeps, vec![Duration::from_millis(200)]);
        rb.ensure_held("rpi4", guard.sysfs()).unwrap();

        let plan = guard.pin(0, 1_500_000, PinStrategy::Auto).unwrap();
        assert_eq!(plan.method, PinMethod::Userspace);
        assert_eq!(fx.tree.read_policy_attr(0, "scaling_setspeed").unwrap(), "1500000");
        assert_eq!(fx.tree.read_policy_attr(0, "scaling_governor").unwrap(), "userspace");
        guard.restore().unwrap();
        assert!(guard.is_restored());
        guard.restore().unwrap(); // idempotent
    }
    assert_eq!(
        board.sysfs_writes(),
        vec![
            ("scaling_governor".into(), "userspace".into()),
            ("scaling_setspeed".into(), "1000000".into()),
            ("scaling_setspeed".into(), "1500000".into()),
            ("scaling_governor".into(), "schedutil".into()),
        ]
    );
    assert_eq!(snapshot(fx.tree.root()), before, "tree settings restored exactly");
    assert!(!std::path::Path::new(&fx.restore_path).exists(), "restore file removed after a successful restore");
}

#[test]
fn without_userspace_min_max_are_written_in_the_safe_order_both_ways() {
    let fx = single(&NO_USERSPACE);
    let before = snapshot(fx.tree.root());
    let mut board = KernelLikeBoard::new("odroid");
    {
        let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
        // Pin low, go up to the top, come back down: the strict board refuses
        // any write that would leave min > max.
        for khz in [600_000, 1_500_000, 750_000] {
            let plan = guard.pin(0, khz, PinStrategy::Auto).unwrap();
            assert_eq!(plan.method, PinMethod::MinMax);
            let rb = guard.read_back(0, khz, 0).unwrap();
            assert!(rb.holds, "{rb:?}");
        }
        let err = guard.pin(0, 1_000_000, PinStrategy::Userspace).unwrap_err();
        assert_eq!(err.kind, DvfsErrorKind::Unsupported);
        assert!(err.to_string().contains("scaling_available_governors"), "{err}");
    }
    let w = |f: &str, v: u64| (f.to_string(), v.to_string());
    assert_eq!(
        board.sysfs_writes(),
        vec![
            // 600..1500 -> 600: only max moves.
            w("scaling_max_freq", 600_000),
            // 600 -> 1500, going up: max first.
            w("scaling_max_freq", 1_500_000),
            w("scaling_min_freq", 1_500_000),
            // 1500 -> 750, going down: min first.
            w("scaling_min_freq", 750_000),
            w("scaling_max_freq", 750_000),
            // Restore (dropped guard) to 600..1500: min down first, then max up.
            w("scaling_min_freq", 600_000),
            w("scaling_max_freq", 1_500_000),
        ]
    );
    assert_eq!(snapshot(fx.tree.root()), before);
}

#[test]
fn big_little_policies_are_found_pinned_and_restored_independently() {
    let fx = fixture(|b| {
        b.policy(&[0, 1, 2, 3], &[500_000, 1_000_000, 1_400_000], &ALL_GOVERNORS).policy_with(FakePolicy::new(
            &[4, 5, 6, 7],
            &[600_000, 1_200_000, 1_800_000, 2_000_000],
            &NO_USERSPACE,
        ))
    });
    let before = snapshot(fx.tree.root());
    let mut board = KernelLikeBoard::new("odroid-n2");
    let policies = discover_policies(&mut board, &fx.sysfs).unwrap();
    assert_eq!(policies.iter().map(|p| p.id).collect::<Vec<_>>(), vec![0, 4]);
    assert_eq!(policies[1].related_cpus, vec![4, 5, 6, 7]);
    assert_eq!(policies[1].available_khz, vec![600_000, 1_200_000, 1_800_000, 2_000_000]);
    assert_eq!(policies[1].cpuinfo_max_khz, Some(2_000_000));
    {
        let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0, 4], &fx.restore_path).unwrap();
        assert_eq!(guard.pin(0, 1_000_000, PinStrategy::Auto).unwrap().method, PinMethod::Userspace);
        assert_eq!(guard.pin(4, 1_800_000, PinStrategy::Auto).unwrap().method, PinMethod::MinMax);
        assert!(guard.read_back(0, 1_000_000, 0).unwrap().holds);
        assert!(guard.read_back(4, 1_800_000, 0).unwrap().holds);
        // The LITTLE cluster's pin did not touch the big one.
        assert_eq!(fx.tree.read_policy_attr(4, "scaling_governor").unwrap(), "schedutil");
        assert_eq!(fx.tree.read_policy_attr(0, "scaling_max_freq").unwrap(), "1400000");
        // A policy that was not saved cannot be touched.
        let err = guard.pin(2, 1_000_000, PinStrategy::Auto).unwrap_err();
        assert_eq!(err.kind, DvfsErrorKind::NoPolicy);
        assert!(err.to_string().contains("policy2 was not saved"), "{err}");
        guard.restore().unwrap();
    }
    assert_eq!(snapshot(fx.tree.root()), before);
}

#[test]
fn frequencies_fall_back_to_time_in_state() {
    let fx =
        fixture(|b| b.policy_with(FakePolicy::new(&[0, 1], &LEVELS, &ALL_GOVERNORS).without_available_frequencies()));
    let mut board = KernelLikeBoard::new("rpi4");
    let policy = read_policy(&mut board, &fx.sysfs, 0).unwrap();
    assert_eq!(policy.frequencies_from, FrequencySource::TimeInState);
    assert_eq!(policy.available_khz, LEVELS.to_vec());
    let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
    guard.pin(0, 750_000, PinStrategy::Auto).unwrap();
    assert!(guard.read_back(0, 750_000, 0).unwrap().holds);
    // Not in the table: refused before any write, naming what is available.
    let err = guard.pin(0, 800_000, PinStrategy::Auto).unwrap_err();
    assert_eq!(err.kind, DvfsErrorKind::Unsupported);
    assert!(err.to_string().contains("800000 kHz is not a frequency this policy offers"), "{err}");
}

#[test]
fn no_frequency_table_at_all_is_a_clear_error() {
    let fx = fixture(|b| {
        b.policy_with(
            FakePolicy::new(&[0], &LEVELS, &NO_USERSPACE).without_available_frequencies().without_time_in_state(),
        )
    });
    let mut board = KernelLikeBoard::new("x86");
    let policy = read_policy(&mut board, &fx.sysfs, 0).unwrap();
    assert_eq!(policy.frequencies_from, FrequencySource::Unknown);
    let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
    let err = guard.pin(0, 600_000, PinStrategy::Auto).unwrap_err();
    assert!(err.to_string().contains("lists no frequencies at all"), "{err}");
}

#[test]
fn read_only_attribute_gives_advice_and_everything_is_restored() {
    // Root ignores file modes, so the test double refuses the write with EACCES
    // the way a non-root user's write to a 0644 root-owned sysfs file fails.
    let fx = single(&ALL_GOVERNORS);
    let before = snapshot(fx.tree.root());
    let mut board = KernelLikeBoard::new("rpi4");
    board.refuse_writes_to.insert("scaling_setspeed".into());
    {
        let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
        let err = guard.pin(0, 1_000_000, PinStrategy::Auto).unwrap_err();
        assert_eq!(err.kind, DvfsErrorKind::ReadOnly);
        let text = err.to_string();
        let path = fx.tree.policy_file(0, "scaling_setspeed");
        assert!(text.starts_with(&format!("board rpi4: cpufreq policy0: {}: not writable", path.display())), "{text}");
        assert!(text.contains("set `sudo: true`"), "{text}");
        assert!(!err.is_retryable());
        // The governor was already switched: the drop must put it back.
        assert_eq!(fx.tree.read_policy_attr(0, "scaling_governor").unwrap(), "userspace");
    }
    assert_eq!(snapshot(fx.tree.root()), before, "restored on the error path by the guard's drop");
    assert!(!std::path::Path::new(&fx.restore_path).exists());
}

#[test]
fn read_only_with_sudo_says_so() {
    let fx = single(&NO_USERSPACE);
    let mut board = KernelLikeBoard::new("rpi4");
    board.refuse_writes_to.insert("scaling_max_freq".into());
    let sysfs = Sysfs::new(fx.tree.root_str(), true);
    // The double refuses before the transport runs `sudo -n tee`, as a board
    // whose sudoers does not allow it would.
    let mut guard = DvfsGuard::save(&mut board, sysfs, &[0], &fx.restore_path).unwrap();
    let err = guard.pin(0, 600_000, PinStrategy::Auto).unwrap_err();
    assert!(err.to_string().contains("even through `sudo -n`"), "{err}");
}

#[test]
fn an_unwritable_path_on_the_local_transport_names_board_policy_and_path() {
    // On the real local transport: the attribute is a directory, which even
    // root cannot write as a file.
    let fx = single(&ALL_GOVERNORS);
    let setspeed_path = fx.tree.policy_file(0, "scaling_setspeed");
    let mut board = LocalBoard::new("sim");
    let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
    fs::remove_file(&setspeed_path).unwrap();
    fs::create_dir(&setspeed_path).unwrap();
    let err = guard.pin(0, 1_500_000, PinStrategy::Auto).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("board sim: cpufreq policy0: {}", setspeed_path.display())), "{text}");
    assert!(text.contains("writing \"1500000\" failed"), "{text}");
    assert_eq!(err.kind, DvfsErrorKind::Transport(harness::board::ErrorKind::Remote));
    // The governor had been switched; restoring after the error puts it back.
    assert_eq!(fx.tree.read_policy_attr(0, "scaling_governor").unwrap(), "userspace");
    guard.restore().unwrap();
    assert_eq!(fx.tree.read_policy_attr(0, "scaling_governor").unwrap(), "schedutil");
    assert!(!std::path::Path::new(&fx.restore_path).exists());
}

#[test]
fn a_frequency_that_does_not_take_is_reported_with_requested_and_read_back() {
    // Plain LocalBoard over the static tree: nothing moves scaling_cur_freq,
    // like a driver (or firmware cap) that ignores the request.
    let fx = single(&ALL_GOVERNORS);
    let mut board = LocalBoard::new("sim");
    let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
    let mut clock = no_clock();
    let rb = guard
        .pin_and_verify(0, 1_500_000, PinStrategy::Auto, Duration::from_secs(1), DEFAULT_FREQ_TOLERANCE_KHZ, &mut clock)
        .unwrap();
    assert!(!rb.holds);
    assert_eq!((rb.requested_khz, rb.scaling_cur_khz), (1_500_000, 600_000));
    let err = rb.ensure_held("sim", guard.sysfs()).unwrap_err();
    assert_eq!(err.kind, DvfsErrorKind::FrequencyNotHeld);
    assert!(err.to_string().contains("requested 1500000 kHz, read back 600000 kHz"), "{err}");
    guard.restore().unwrap();
    assert_eq!(fx.tree.read_policy_attr(0, "scaling_governor").unwrap(), "schedutil");
}

#[test]
fn unreadable_cpuinfo_cur_freq_is_not_an_error() {
    let fx = fixture(|b| b.policy_with(FakePolicy::new(&[0], &LEVELS, &ALL_GOVERNORS).without_cpuinfo_cur_freq()));
    let mut board = KernelLikeBoard::new("rpi4");
    let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
    guard.pin(0, 1_200_000, PinStrategy::Auto).unwrap();
    let rb = guard.read_back(0, 1_200_000, 0).unwrap();
    assert!(rb.holds);
    assert_eq!(rb.cpuinfo_cur_khz, None);
}

#[test]
fn a_board_failing_mid_run_is_restored_on_drop() {
    let fx = single(&NO_USERSPACE);
    let before = snapshot(fx.tree.root());
    let mut board = KernelLikeBoard::new("flaky");
    // The restore file is write 1; the first pin writes min and max (2, 3).
    board.fail_after_writes = Some(3);
    let result = (|| -> Result<(), harness::dvfs::DvfsError> {
        let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path)?;
        guard.pin(0, 750_000, PinStrategy::Auto)?;
        guard.pin(0, 1_500_000, PinStrategy::Auto)?; // fails
        Ok(())
    })();
    let err = result.unwrap_err();
    assert!(err.to_string().contains("Input/output error"), "{err}");
    // The drop tried to restore but the board refuses writes: the restore
    // file is kept for the next connect.
    assert!(std::path::Path::new(&fx.restore_path).exists());
    board.fail_after_writes = None;
    let recovered = recover_from_restore_file(&mut board, &fx.sysfs, &fx.restore_path).unwrap().expect("file found");
    assert_eq!(recovered.board, "flaky");
    assert_eq!(snapshot(fx.tree.root()), before);
    assert!(!std::path::Path::new(&fx.restore_path).exists());
}

#[test]
fn a_failed_explicit_restore_can_be_retried_and_is_not_repeated_on_drop() {
    let fx = single(&NO_USERSPACE);
    let before = snapshot(fx.tree.root());
    let mut board = KernelLikeBoard::new("flaky");
    let blocked = board.writes_blocked.clone();
    {
        let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
        guard.pin(0, 1_000_000, PinStrategy::Auto).unwrap();
        blocked.store(true, Ordering::SeqCst);
        let err = guard.restore().unwrap_err();
        assert!(err.to_string().contains("Input/output error"), "{err}");
        assert!(std::path::Path::new(&fx.restore_path).exists());
        // Retried by the caller once the board is back.
        blocked.store(false, Ordering::SeqCst);
        guard.restore().unwrap();
    }
    assert_eq!(snapshot(fx.tree.root()), before);

    let mut board = KernelLikeBoard::new("flaky");
    let blocked = board.writes_blocked.clone();
    let attempts = board.write_attempts.clone();
    let attempts_after_failure = {
        let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
        guard.pin(0, 750_000, PinStrategy::Auto).unwrap();
        blocked.store(true, Ordering::SeqCst);
        assert!(guard.restore().is_err());
        attempts.load(Ordering::SeqCst)
    }; // the guard drops here
    assert_eq!(attempts.load(Ordering::SeqCst), attempts_after_failure, "the drop does not repeat a failed restore");
    assert!(std::path::Path::new(&fx.restore_path).exists(), "kept for the next connect");
}

#[test]
fn after_a_crash_the_next_connect_restores_from_the_restore_file() {
    let fx = fixture(|b| {
        b.policy(&[0, 1], &LEVELS, &ALL_GOVERNORS)
            .policy_with(FakePolicy::new(&[2, 3], &LEVELS, &ALL_GOVERNORS).governor("userspace").cur_khz(750_000))
    });
    let before = snapshot(fx.tree.root());
    assert_eq!(fx.tree.read_policy_attr(2, "scaling_setspeed").unwrap(), "750000");
    let mut board = KernelLikeBoard::new("rpi4");
    let guard = {
        let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0, 2], &fx.restore_path).unwrap();
        guard.pin(0, 1_500_000, PinStrategy::MinMax).unwrap();
        guard.pin(2, 1_200_000, PinStrategy::Auto).unwrap();
        guard
    };
    // SIGKILL: no drop, no restore.
    std::mem::forget(guard);
    assert_ne!(snapshot(fx.tree.root()), before);

    // The next run connects with a fresh transport.
    let mut board = KernelLikeBoard::new("rpi4");
    let file = recover_from_restore_file(&mut board, &fx.sysfs, &fx.restore_path).unwrap().expect("restore file");
    assert_eq!(file.policies.len(), 2);
    assert_eq!(snapshot(fx.tree.root()), before, "both policies back, including the saved userspace setspeed");
    assert_eq!(
        board.sysfs_writes(),
        vec![("scaling_min_freq".into(), "600000".into()), ("scaling_setspeed".into(), "750000".into()),]
    );
    assert!(!std::path::Path::new(&fx.restore_path).exists());
    // Nothing left to do on the connect after that.
    assert!(recover_from_restore_file(&mut board, &fx.sysfs, &fx.restore_path).unwrap().is_none());
}

#[test]
fn saving_refuses_to_overwrite_an_earlier_restore_file() {
    let fx = single(&ALL_GOVERNORS);
    fs::write(&fx.restore_path, "{}").unwrap();
    let mut board = KernelLikeBoard::new("rpi4");
    let err = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap_err();
    assert_eq!(err.kind, DvfsErrorKind::RestoreFile);
    assert!(err.to_string().contains("recover from it first"), "{err}");
    assert!(board.sysfs_writes().is_empty());
    // And recovering from a corrupt file is an error that explains, not a guess.
    let err = recover_from_restore_file(&mut board, &fx.sysfs, &fx.restore_path).unwrap_err();
    assert_eq!(err.kind, DvfsErrorKind::RestoreFile);
    assert!(err.to_string().contains("unreadable restore file"), "{err}");
}

#[test]
fn an_unreadable_restore_file_is_not_mistaken_for_no_file() {
    let fx = single(&ALL_GOVERNORS);
    // A directory where the file should be: exists, cannot be read as a file.
    fs::create_dir(&fx.restore_path).unwrap();
    let mut board = LocalBoard::new("sim");
    let err = recover_from_restore_file(&mut board, &fx.sysfs, &fx.restore_path).unwrap_err();
    assert!(err.to_string().contains("exists but cannot be read"), "{err}");
}

#[test]
fn throttling_shows_in_time_in_state() {
    let fx = single(&ALL_GOVERNORS);
    let mut board = KernelLikeBoard::new("rpi4");
    let mut guard = DvfsGuard::save(&mut board, fx.sysfs.clone(), &[0], &fx.restore_path).unwrap();
    guard.pin(0, 1_500_000, PinStrategy::Auto).unwrap();
    let before = guard.time_in_state(0).unwrap().expect("stats present");
    // A clean cell: 3 s at the pinned level.
    fx.tree
        .write_policy_attr(0, "stats/time_in_state", "600000 0\n750000 0\n1000000 0\n1200000 0\n1500000 300")
        .unwrap();
    let mid = guard.time_in_state(0).unwrap().unwrap();
    let clean = residency_between(&before, &mid, 1_500_000);
    assert!(!clean.left_pinned_frequency());
    assert_eq!(clean.at_pinned, Duration::from_secs(3));
    // A throttled cell: 0.5 s at 1.2 GHz.
    fx.tree
        .write_policy_attr(0, "stats/time_in_state", "600000 0\n750000 0\n1000000 0\n1200000 50\n1500000 550")
        .unwrap();
    let after = guard.time_in_state(0).unwrap().unwrap();
    let throttled = residency_between(&mid, &after, 1_500_000);
    assert!(throttled.left_pinned_frequency());
    assert_eq!(throttled.elsewhere_by_khz, vec![(1_200_000, Duration::from_millis(500))]);
    assert!((throttled.fraction_elsewhere() - 0.5 / 3.0).abs() < 1e-9);
    guard.restore().unwrap();
}

#[test]
fn discovery_without_the_possible_file_lists_the_directory() {
    let fx = fixture(|b| b.policy(&[0, 1], &LEVELS, &NO_USERSPACE).policy(&[2, 3], &LEVELS, &NO_USERSPACE));
    fs::remove_file(fx.tree.root().join("devices/system/cpu/possible")).unwrap();
    let mut board = LocalBoard::new("sim");
    let ids: Vec<u32> = discover_policies(&mut board, &fx.sysfs).unwrap().iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![0, 2]);
    let settings = read_settings(&mut board, &fx.sysfs, 2).unwrap();
    assert_eq!((settings.min_khz, settings.max_khz, settings.setspeed_khz), (600_000, 1_500_000, None));
}

#[test]
fn a_missing_tree_or_policy_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut board = LocalBoard::new("sim");
    let sysfs = Sysfs::new(dir.path().to_string_lossy(), false);
    let err = discover_policies(&mut board, &sysfs).unwrap_err();
    assert_eq!(err.kind, DvfsErrorKind::NoPolicy);
    assert!(err.to_string().contains("no cpufreq policies"), "{err}");
    let fx = single(&ALL_GOVERNORS);
    let err = read_policy(&mut board, &fx.sysfs, 4).unwrap_err();
    assert!(err.to_string().contains("cpufreq policy4") && err.to_string().contains("hil board probe"), "{err}");
}
