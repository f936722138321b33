#!/usr/bin/env python3
"""Writes syscall_names.rs (beside this script) from Linux's asm/unistd_64.h."""
import os
import re

HEADER = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
names = {}
for line in open(HEADER):
    m = re.match(r"#define __NR_(\w+) (\d+)", line)
    if m:
        names[int(m.group(2))] = m.group(1)
top = max(names)
out = [
    "//! x86_64 system call names by number, for the message of a forbidden call. Generated from",
    "//! Linux's `asm/unistd_64.h` (Debian 12's linux-libc-dev) by `vmm/src/jail/gen-syscall-names.py`.",
    "",
    "/// The name of system call `nr`, or `None` for a number Linux does not use.",
    "pub fn syscall_name(nr: i64) -> Option<&'static str> {",
    "    usize::try_from(nr)",
    "        .ok()",
    "        .and_then(|i| NAMES.get(i))",
    "        .copied()",
    "        .filter(|n| !n.is_empty())",
    "}",
    "",
    "#[rustfmt::skip]",
    f"static NAMES: [&str; {top + 1}] = [",
]
out += [f'    "{names.get(i, "")}",' for i in range(top + 1)]
out += ["];", ""]
out += """#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_libc_numbers() {
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(syscall_name(libc::SYS_ioctl), Some("ioctl"));
        assert_eq!(syscall_name(libc::SYS_openat2), Some("openat2"));
        assert_eq!(syscall_name(-1), None);
        assert_eq!(syscall_name(100_000), None);
    }
}""".split("\n")
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "syscall_names.rs")
with open(path, "w") as f:
    f.write("\n".join(out) + "\n")
