//! `uipd --kernel ... --boot MODE`: the command-line errors, checked
//! without booting a guest (booting through PVH is in tests/vmm_nested.rs,
//! the entry state in the unit tests of src/vmm/). Each run is bounded by
//! `timeout`.

use std::process::{Command, Output};

fn uipd(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-k", "2", "30", env!("CARGO_BIN_EXE_uipd")])
        .args(args)
        .output()
        .expect("run uipd")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The ELF header of an x86-64 executable with no program headers: an
/// ELF vmlinux as far as the loader goes, without a PVH note.
fn elf_without_notes() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&0x100_0000u64.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes());
    f.extend_from_slice(&56u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[64, 0, 0, 0, 0, 0]);
    f
}

#[test]
fn boot_without_kernel_or_with_an_unknown_mode_is_a_usage_error() {
    let o = uipd(&["--boot", "pvh", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--kernel"),
        "{}",
        text(&o)
    );
    let o = uipd(&[
        "--kernel",
        "/nonexistent",
        "--boot",
        "pvh32",
        "-net",
        "none",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pvh32") && err.contains("auto") && err.contains("linux64"),
        "the error does not list the modes: {}",
        text(&o)
    );
}

#[test]
fn boot_pvh_with_a_vmlinux_without_the_note_says_so() {
    let path = std::env::temp_dir().join(format!("uipd-vmm-cli-{}.elf", std::process::id()));
    std::fs::write(&path, elf_without_notes()).unwrap();
    let p = path.to_str().unwrap();
    let o = uipd(&[
        "--kernel", p, "--boot", "pvh", "-net", "none", "--mem", "64",
    ]);
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("/dev/kvm") {
        eprintln!("skipped: no usable /dev/kvm: {err}");
        return;
    }
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        err.contains("has no PVH entry") && err.contains("CONFIG_PVH"),
        "{}",
        text(&o)
    );
}
