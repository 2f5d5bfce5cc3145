//! The unit run for real: a debootstrapped Debian 12 with the .deb installed and
//! `remote-vm.service` enabled, booted with systemd as PID 1 in QEMU on Debian's
//! 6.12 cloud kernel (the shared kernels lack the namespaces, seccomp and
//! cgroup-BPF that the unit's sandboxing needs; the cloud kernel lacks 9p, so the
//! tree goes in as an ext4 disk image). A check service reports over the console.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use remote_vm_common::{Family, Point};

use crate::{cgsoak, cpio::Cpio, kernels, util::{say, sh}, vm, webtest};

const CHECK_SCRIPT: &str = r#"#!/bin/bash
# Runs after remote-vm.service under systemd; reports on the serial console.
say() { echo "systemd-test: $*" > /dev/ttyS0; }
for i in $(seq 1 180); do
    systemctl is-active --quiet remote-vm.service && break
    systemctl is-failed --quiet remote-vm.service && break
    sleep 1
done
say "active=$(systemctl is-active remote-vm.service)"
if ! systemctl is-active --quiet remote-vm.service; then
    # Why not: the service's own words, then give up (nothing below can pass).
    systemctl status --no-pager remote-vm.service remote-vm.socket 2>&1 | while IFS= read -r line; do say "status| $line"; done
    journalctl -b --no-pager -o cat -u remote-vm.service -u remote-vm.socket | tail -40 | while IFS= read -r line; do say "journal| $line"; done
    say "done"
    systemctl --force --force reboot
fi
say "socket active=$(systemctl is-active remote-vm.socket) enabled=$(systemctl is-enabled remote-vm.socket)"
say "socket-file $(stat -c '%a %U:%G' /run/remote-vm/remote-vm.sock)"
pid=$(systemctl show -p MainPID --value remote-vm.service)
say "user=$(stat -c %U /proc/$pid) uid=$(stat -c %u /proc/$pid)"
say "capeff=$(awk '/^CapEff/{print $2}' /proc/$pid/status)"
for t in /proc/$pid/task/*; do say "thread-capeff=$(awk '/^CapEff/{print $2}' $t/status)"; done
# The kernel's symbols, copied by root for the daemon: no other user reads them.
say "kallsyms dir=$(stat -c '%a' /run/remote-vm-symbols) other=$(runuser -u nobody -- cat /run/remote-vm-symbols/kallsyms >/dev/null 2>&1 && echo readable || echo denied)"
exec 3<>/dev/tcp/127.0.0.1/19361
printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
while IFS= read -r line <&3; do say "healthz| ${line%$'\r'}"; done
exec 3<&-
exec 3<>/dev/tcp/127.0.0.1/19361
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
say "metrics-lines=$(grep -c '^remote_vm_' <&3)"
exec 3<&-
# Who may see identities: /stalls over plain TCP is refused; on the Unix
# socket root and members of group remote-vm-ops get it, other users cannot open it.
useradd -M -s /bin/sh alice
useradd -M -s /bin/sh -G remote-vm-ops bob
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" 2>/dev/null; }
say "stalls tcp=$(code http://127.0.0.1:19361/stalls)"
say "stalls socket-root=$(code --unix-socket /run/remote-vm/remote-vm.sock http://localhost/stalls)"
say "stalls socket-member=$(runuser -u bob -- curl -s -o /dev/null -w '%{http_code}' --max-time 10 --unix-socket /run/remote-vm/remote-vm.sock http://localhost/stalls 2>/dev/null)"
say "stalls socket-other=$(runuser -u alice -- curl -s -o /dev/null -w '%{http_code}' --max-time 10 --unix-socket /run/remote-vm/remote-vm.sock http://localhost/stalls 2>/dev/null)"
runuser -u bob -- /usr/bin/remote-vm-daemon top --once --interval 0.5 > /tmp/top-bob.txt 2>&1
say "top member exit=$? stalls-shown=$(grep -c 'recent stalls (≥' /tmp/top-bob.txt)"
runuser -u alice -- /usr/bin/remote-vm-daemon top --once --interval 0.5 > /tmp/top-alice.txt 2>&1
say "top other exit=$? refused=$(grep -c 'cannot connect: Permissio' /tmp/top-alice.txt)"
# A real reader against the service: the tree's ps under its strace during a
# merging mprotect() hold; the stall, its holder and the holder's stack named
# from the symbols ExecStartPre copied (rvm-testkit prints each check).
/usr/local/bin/rvm-testkit unit-readers --expect @EXPECT@ --daemon-pid "$(systemctl show -p MainPID --value remote-vm.service)" > /tmp/unit-readers.txt 2>&1
rc=$?
grep -E 'FAIL|^unit-readers:|stack:|read the target' /tmp/unit-readers.txt | head -30 | while IFS= read -r line; do say "unit-readers| $line"; done
say "unit-readers exit=$rc"
# No squatting: with the service stopped, the socket unit still holds the port
# (a user's own listener on it fails), and a connection starts the service.
squat() { runuser -u alice -- /usr/bin/remote-vm-daemon run --listen "$1" --web.socket "" 2>&1 | head -1; }
systemctl stop remote-vm.service
say "squat service-stopped socket=$(systemctl is-active remote-vm.socket) | $(squat 127.0.0.1:19361)"
say "squat6 service-stopped socket=$(systemctl is-active remote-vm.socket) | $(squat '[::1]:19361')"
say "activation healthz=$(code --max-time 120 http://127.0.0.1:19361/healthz) active=$(systemctl is-active remote-vm.service)"
for i in $(seq 1 60); do systemctl is-active --quiet remote-vm.service && break; sleep 1; done
pid=$(systemctl show -p MainPID --value remote-vm.service)
# A service that fails at every start: with the shipped StartLimitIntervalSec=0
# it is restarted for ever and the socket keeps the port; with systemd's
# default start limit the socket fails and the port is free (why the unit sets it).
# Its ExecStartPre (the symbols' copy, seconds under TCG) is cleared too: the
# starts fail as fast as the restart policy allows.
mkdir -p /etc/systemd/system/remote-vm.service.d
printf '[Service]\nExecStartPre=\nExecStart=\nExecStart=/bin/false\nRestartSec=200ms\n' > /etc/systemd/system/remote-vm.service.d/fail.conf
systemctl daemon-reload
systemctl restart remote-vm.service
sleep 8
say "start-limit shipped restarts=$(systemctl show -p NRestarts --value remote-vm.service) socket=$(systemctl is-active remote-vm.socket) | $(squat 127.0.0.1:19361)"
printf '[Unit]\nStartLimitIntervalSec=10s\nStartLimitBurst=5\n' > /etc/systemd/system/remote-vm.service.d/limit.conf
systemctl daemon-reload
systemctl reset-failed remote-vm.service
systemctl restart remote-vm.service
sleep 8
say "start-limit default service=$(systemctl show -p Result --value remote-vm.service) socket=$(systemctl is-active remote-vm.socket) socket-result=$(systemctl show -p Result --value remote-vm.socket) | $(squat 127.0.0.1:19361)"
rm -r /etc/systemd/system/remote-vm.service.d
systemctl daemon-reload
systemctl reset-failed remote-vm.service remote-vm.socket
systemctl start remote-vm.socket remote-vm.service
for i in $(seq 1 120); do systemctl is-active --quiet remote-vm.service && break; sleep 1; done
say "after-start-limit active=$(systemctl is-active remote-vm.service) socket=$(systemctl is-active remote-vm.socket)"
pid=$(systemctl show -p MainPID --value remote-vm.service)
# SIGHUP (systemctl reload): the config is re-read, the process stays.
systemctl reload remote-vm.service
sleep 3
say "after-reload active=$(systemctl is-active remote-vm.service) same-pid=$([ "$(systemctl show -p MainPID --value remote-vm.service)" = "$pid" ] && echo yes || echo no)"
# A stopped daemon sends no WATCHDOG=1: systemd kills and restarts it (once:
# the restarts counted from here).
before=$(systemctl show -p NRestarts --value remote-vm.service)
kill -STOP "$pid"
new=$pid
for i in $(seq 1 120); do
    new=$(systemctl show -p MainPID --value remote-vm.service)
    [ "$new" != "$pid" ] && [ "$new" != 0 ] && systemctl is-active --quiet remote-vm.service && break
    sleep 1
done
say "watchdog new-pid=$([ "$new" != "$pid" ] && echo yes || echo no) restarts=$(( $(systemctl show -p NRestarts --value remote-vm.service) - before )) active=$(systemctl is-active remote-vm.service)"
# Upgrades restart a running service, unless policy-rc.d forbids it (exit 101).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
before=$(systemctl show -p MainPID --value remote-vm.service)
dpkg -i /root/remote-vm.deb >/dev/null 2>&1
after=$(systemctl show -p MainPID --value remote-vm.service)
say "upgrade policy-rc.d=101 restarted=$([ "$before" != "$after" ] && echo yes || echo no) active=$(systemctl is-active remote-vm.service)"
rm -f /usr/sbin/policy-rc.d
dpkg -i /root/remote-vm.deb >/dev/null 2>&1
for i in $(seq 1 60); do systemctl is-active --quiet remote-vm.service && break; sleep 1; done
again=$(systemctl show -p MainPID --value remote-vm.service)
say "upgrade policy-rc.d=none restarted=$([ "$again" != "$after" ] && echo yes || echo no) active=$(systemctl is-active remote-vm.service)"
# Capabilities that cannot be dropped (capset denied by seccomp): exit 1, not serve.
systemctl start rvm-capset.service
for i in $(seq 1 120); do
    state=$(systemctl show -p ActiveState --value rvm-capset.service)
    [ "$state" = failed ] || [ "$state" = inactive ] && break
    sleep 1
done
say "capset-denied| status=$(systemctl show -p ExecMainStatus --value rvm-capset.service)"
journalctl -u rvm-capset.service --no-pager -o cat | grep -q 'could not drop capabilities' && say "capset-denied-logged=yes"
# Journal priorities: a degraded daemon's warning reaches `journalctl -p warning`,
# info lines (the reload) do not.
systemctl start rvm-degraded.service
for i in $(seq 1 120); do
    journalctl -u rvm-degraded.service --no-pager -o cat | grep -q 'degraded: ' && break
    sleep 1
done
journalctl -p warning -u rvm-degraded.service --no-pager -o cat | grep -q 'degraded: @DEGRADED@' && say "journal-warning-degraded=yes"
journalctl -p warning -u remote-vm.service --no-pager -o cat | grep -q 'SIGHUP: config re-read' && say "journal-info-shown-as-warning=yes"
journalctl -p info -u remote-vm.service --no-pager -o cat | grep -q 'SIGHUP: config re-read' && say "journal-info=yes"
systemctl stop rvm-degraded.service
# Opening it to the fleet (the shipped drop-in example): a Prometheus in another
# network namespace scrapes with the drop-in, not without it, and not when
# IPAddressAllow= names another address.
ip netns add prom
ip link add rvm0 type veth peer name rvm1
ip link set rvm1 netns prom
ip addr add 10.77.0.1/24 dev rvm0
ip link set rvm0 up
ip netns exec prom ip addr add 10.77.0.2/24 dev rvm1
ip netns exec prom ip link set rvm1 up
ip netns exec prom ip link set lo up
scrape() {
    ip netns exec prom timeout 10 bash -c 'exec 3<>/dev/tcp/10.77.0.1/19361 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && grep -c "^remote_vm_" <&3' 2>/dev/null || echo 0
}
restart_with() {
    systemctl daemon-reload
    systemctl restart remote-vm.service
    for i in $(seq 1 120); do systemctl is-active --quiet remote-vm.service && break; sleep 1; done
}
# A socket unit's new ListenStream= takes effect when it starts again.
restart_both() {
    systemctl daemon-reload
    systemctl stop remote-vm.service remote-vm.socket
    systemctl start remote-vm.socket remote-vm.service
    for i in $(seq 1 120); do systemctl is-active --quiet remote-vm.service && break; sleep 1; done
}
# Probe costs: self_stats = true in the config. Without the drop-in the unit
# grants no CAP_SYS_ADMIN: the daemon serves and /healthz says why; with the
# shipped self-stats.conf the kernel collects.
costs() { curl -s --max-time 10 http://127.0.0.1:19361/healthz | grep '^probe costs: ' | head -1; }
sed -i 's/^self_stats = false/self_stats = true/' /etc/remote-vm/remote-vm.toml
restart_with
say "costs without-dropin active=$(systemctl is-active remote-vm.service) | $(costs)"
mkdir -p /etc/systemd/system/remote-vm.service.d
cp /usr/share/doc/remote-vm/examples/self-stats.conf /etc/systemd/system/remote-vm.service.d/
restart_with
say "costs with-dropin active=$(systemctl is-active remote-vm.service) | $(costs)"
say "costs capeff=$(grep CapEff /proc/$(systemctl show -p MainPID --value remote-vm.service)/status | awk '{print $2}')"
sed -i 's/^self_stats = true/self_stats = false/' /etc/remote-vm/remote-vm.toml
rm -r /etc/systemd/system/remote-vm.service.d
restart_with
say "fleet without-dropin=$(scrape)"
mkdir -p /etc/systemd/system/remote-vm.socket.d
sed 's/^IPAddressAllow=.*/IPAddressAllow=10.77.0.2/' /usr/share/doc/remote-vm/examples/fleet.conf > /etc/systemd/system/remote-vm.socket.d/fleet.conf
restart_both
say "fleet with-dropin=$(scrape)"
say "fleet socket-kept=$(code --unix-socket /run/remote-vm/remote-vm.sock http://localhost/stalls)"
sed -i 's/^IPAddressAllow=.*/IPAddressAllow=10.77.0.9/' /etc/systemd/system/remote-vm.socket.d/fleet.conf
restart_both
say "fleet other-allowed=$(scrape)"
# TLS and basic auth under DynamicUser=: the shipped tls.conf loads the web
# config and the files it names (root-only, 0600) as credentials.
sed -i 's/^IPAddressAllow=.*/IPAddressAllow=10.77.0.2/' /etc/systemd/system/remote-vm.socket.d/fleet.conf
install -m 0600 /root/pki/web-config.yml /root/pki/tls.crt /root/pki/tls.key /root/pki/client-ca.crt /etc/remote-vm/
mkdir -p /etc/systemd/system/remote-vm.service.d
cp /usr/share/doc/remote-vm/examples/tls.conf /etc/systemd/system/remote-vm.service.d/
restart_both
say "tls active=$(systemctl is-active remote-vm.service)"
tlsget() {
    ip netns exec prom curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --resolve localhost:19361:10.77.0.1 "$@" 2>/dev/null
}
pass="prometheus:$(cat /root/pki/password)"
cert="--cacert /root/pki/ca.crt --cert /root/pki/client.crt --key /root/pki/client.key"
say "tls certificate-and-password=$(tlsget $cert -u "$pass" https://localhost:19361/metrics)"
say "tls wrong-password=$(tlsget $cert -u prometheus:guess https://localhost:19361/metrics)"
say "tls no-client-certificate=$(tlsget --cacert /root/pki/ca.crt -u "$pass" https://localhost:19361/metrics)"
say "tls plain-http=$(tlsget -u "$pass" http://localhost:19361/metrics)"
# Authenticated over TCP (certificate and password): /stalls too.
say "tls stalls-authenticated=$(tlsget $cert -u "$pass" https://localhost:19361/stalls)"
systemctl reload remote-vm.service
sleep 2
say "tls after-reload=$(tlsget $cert -u "$pass" https://localhost:19361/healthz)"
rm -r /etc/systemd/system/remote-vm.service.d /etc/systemd/system/remote-vm.socket.d
restart_both
# The systemd side of the abuse soak (rvm-testkit cgroup-soak): alice's readers
# waiting behind her own target, moved to another cgroup mid-wait and the first
# removed, alice trying to bind the port; root's reload every 5 s.
if [ @CGSOAK_SECONDS@ -gt 0 ]; then
    /usr/local/bin/rvm-testkit cgroup-soak --user alice --seconds @CGSOAK_SECONDS@ > /tmp/cgsoak.out 2> /tmp/cgsoak.err
    say "cgroup-soak exit=$?"
    while IFS= read -r line; do say "cgroup-soak| $line"; done < /tmp/cgsoak.err
    say "cgroup-soak-result $(sed -n 's/^cgroup-soak-result //p' /tmp/cgsoak.out)"
fi
journalctl -u remote-vm.service --no-pager -o cat | while IFS= read -r line; do say "journal| $line"; done
# Stopping it for good: the socket too (else a connection starts it again).
systemctl stop remote-vm.socket remote-vm.service
say "stopped result=$(systemctl show -p Result --value remote-vm.service) status=$(systemctl show -p ExecMainStatus --value remote-vm.service)"
# An upgrade starts nothing the operator stopped.
dpkg -i /root/remote-vm.deb >/dev/null 2>&1
sleep 2
say "upgrade-while-stopped active=$(systemctl is-active remote-vm.service)"
say "done"
systemctl --force --force reboot
"#;

const CHECK_UNIT: &str = "[Unit]
Description=remote-vm systemd test
After=remote-vm.service
Wants=remote-vm.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/rvm-systemd-check

[Install]
WantedBy=multi-user.target
";

/// The daemon as root with `capset` denied by seccomp: it must exit 1 rather
/// than serve with the capabilities it cannot drop. Started by the check only.
const CAPSET_UNIT: &str = "[Unit]
Description=remote-vm with capset denied (systemd test)

[Service]
ExecStart=/usr/bin/remote-vm-daemon run --listen 127.0.0.1:19399 --web.socket \"\"
SystemCallFilter=~capset
SystemCallErrorNumber=EPERM
";

/// The daemon with the host family switched off: degraded, which it logs as a
/// warning (`degraded_line`). Started by the check only.
const DEGRADED_UNIT: &str = "[Unit]
Description=remote-vm degraded by config (systemd test)

[Service]
ExecStart=/usr/bin/remote-vm-daemon run --listen 127.0.0.1:19398 --config /etc/rvm-degraded.toml --web.socket \"\"
";

const DEGRADED_CONFIG: &str = "[probes]\nmmap_lock_host = \"off\"\n";

/// What the degraded daemon logs: every probe of a family with a default mode
/// counts (an opt-in family left alone does not), the host family's are off.
fn degraded_line() -> String {
    let points = |f: &Family| f.spec().points.len();
    let wanted: Vec<Family> = Family::ALL.into_iter().filter(|f| !f.opt_in_only()).collect();
    let total: usize = wanted.iter().map(points).sum();
    let off = points(&Family::MmapLockHost);
    format!("{} of {total} probes attached", total - off)
}

pub(crate) const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
echo "init: starting"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
insmod /virtio_blk.ko
insmod /veth.ko
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || { echo "init: cannot mount /dev/vda"; reboot -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /lib/systemd/systemd
"#;

fn chroot(tree: &Path, args: &[&str]) -> Result<()> {
    sh(Command::new("chroot").arg(tree).args(args).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The systemd side of the abuse soak in `cargo xtask test` (`deb-test
/// --cgroup-soak-seconds 600`: the full one).
pub const CGROUP_SOAK_SECONDS: u64 = 60;

/// A Debian release the package is proven on.
pub struct Release {
    /// debootstrap's suite.
    pub suite: &'static str,
    pub name: &'static str,
}

/// The package is built on bookworm and proven on both current releases.
pub const RELEASES: [Release; 2] = [Release { suite: "bookworm", name: "Debian 12" }, Release { suite: "trixie", name: "Debian 13" }];

/// Boots the installed package under systemd on `release` and checks the
/// service, with `soak_seconds` of the abuse soak's systemd side (0: none).
pub fn test(root: &Path, release: &Release, base: &Path, deb: &Path, soak_seconds: u64) -> Result<()> {
    let (kernel, modules) = kernels::debian_612_with_modules(root)?;
    let dir = root.join(format!("target/systemd-test/{}", release.suite));
    let tree = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    sh(Command::new("cp").arg("-a").arg(base).arg(&tree)).context("copy the debootstrap tree")?;
    let deb_name = deb.file_name().context("deb")?.to_string_lossy().to_string();
    std::fs::copy(deb, tree.join("tmp").join(&deb_name))?;
    chroot(&tree, &["dpkg", "-i", &format!("/tmp/{deb_name}")])?;
    // For the upgrade checks (systemd empties /tmp at boot).
    std::fs::copy(deb, tree.join("root/remote-vm.deb"))?;
    std::fs::create_dir_all(tree.join("usr/local/sbin"))?;
    let script = tree.join("usr/local/sbin/rvm-systemd-check");
    let script_text = CHECK_SCRIPT
        .replace("@DEGRADED@", &degraded_line())
        .replace("@CGSOAK_SECONDS@", &soak_seconds.to_string())
        .replace("@EXPECT@", kernel.expect());
    std::fs::write(&script, script_text)?;
    // The kernel's config, where the guest's tests look for it (the stack's truth).
    for (path, file) in vm::kernel_files(&kernel) {
        let dest = tree.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().context("config path")?)?;
        std::fs::copy(&file, &dest).with_context(|| format!("copy {}", file.display()))?;
    }
    std::fs::copy(root.join("target/release/rvm-testkit"), tree.join("usr/local/bin/rvm-testkit")).context("copy rvm-testkit into the tree")?;
    sh(Command::new("chmod").arg("755").arg(&script))?;
    std::fs::write(tree.join("etc/systemd/system/rvm-systemd-check.service"), CHECK_UNIT)?;
    std::fs::write(tree.join("etc/systemd/system/rvm-capset.service"), CAPSET_UNIT)?;
    std::fs::write(tree.join("etc/systemd/system/rvm-degraded.service"), DEGRADED_UNIT)?;
    std::fs::write(tree.join("etc/rvm-degraded.toml"), DEGRADED_CONFIG)?;
    // The TLS files and the scraper's password for the tls.conf check.
    let pki = tree.join("root/pki");
    webtest::write_pki(&pki)?;
    std::fs::write(pki.join("password"), webtest::PASSWORD)?;
    chroot(&tree, &["systemctl", "enable", "remote-vm.service", "rvm-systemd-check.service"])?;
    std::fs::write(tree.join("etc/hostname"), "remote-vm-test\n")?;
    std::fs::write(tree.join("etc/fstab"), "/dev/vda / ext4 rw 0 1\n")?;

    let image = dir.join("root.ext4");
    say!("systemd: writing {} from the tree (mkfs.ext4 -d)", image.display());
    sh(Command::new("truncate").args(["-s", "1500M"]).arg(&image))?;
    sh(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "root", "-d"]).arg(&tree).arg(&image))?;

    let initramfs = dir.join("initramfs.cpio");
    let mut cpio = Cpio::new(std::io::BufWriter::new(std::fs::File::create(&initramfs)?));
    for d in ["/bin", "/proc", "/sys", "/dev", "/newroot"] {
        cpio.dir(d)?;
    }
    cpio.file("/init", 0o755, INIT.as_bytes())?;
    cpio.file("/bin/busybox", 0o755, &std::fs::read("/bin/busybox")?)?;
    for (name, module) in kernels::SYSTEMD_TEST_MODULES.iter().zip(&modules) {
        cpio.file(&format!("/{name}.ko"), 0o644, &std::fs::read(module)?)?;
    }
    cpio.finish()?;

    let console = dir.join("console.log");
    say!("systemd: booting {} with systemd as PID 1 on {} (QEMU {})", release.name, kernel.origin, vm::accel_name(&kernel, vm::Clock::Wall));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900 + soak_seconds);
    let mut attempt = 1;
    let text = loop {
        let out = std::fs::File::create(&console)?;
        let mut child = Command::new("qemu-system-x86_64")
            .args(vm::accel_args(&kernel))
            .args(["-m", "1536", "-smp", "2"])
            .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&kernel.image)
            .arg("-initrd")
            .arg(&initramfs)
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", image.display()))
            .args(["-append", "console=ttyS0 panic=-1 quiet systemd.show_status=false"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start qemu")?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("systemd test timed out; console {} ends:\n{}", console.display(), vm::tail(&console, 15));
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if attempt == 2 || text.contains(vm::INIT_STARTED) {
            break text;
        }
        vm::keep_before_init("systemd", &console, &status.to_string())?;
        attempt += 1;
    };
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split("systemd-test: ").nth(1))
        .collect();
    for l in &lines {
        if !l.starts_with("journal|") && !l.starts_with("thread-capeff") && !l.starts_with("cgroup-soak-result ") {
            say!("  {l}");
        }
    }
    say!("systemd: guest finished in {:.0} s", started.elapsed().as_secs_f64());
    let has = |s: &str| lines.iter().any(|l| *l == s);
    let mut failures = Vec::new();
    let mut expect = |what: &str, ok: bool| {
        if !ok {
            failures.push(what.to_string());
        }
    };
    expect("the service reaches active (Type=notify: READY=1)", has("active=active"));
    expect("the socket unit is enabled with the service (Also=) and active", has("socket active=active enabled=enabled"));
    expect("the Unix socket is 0660 root:remote-vm-ops", has("socket-file 660 root:remote-vm-ops"));
    expect("/stalls over plain TCP: 403", has("stalls tcp=403"));
    expect("/stalls on the Unix socket for root: 200", has("stalls socket-root=200"));
    expect("… for a member of group remote-vm-ops: 200", has("stalls socket-member=200"));
    expect("… a user outside the group cannot open it", has("stalls socket-other=000"));
    expect("top with no flags as a member shows the stalls", has("top member exit=0 stalls-shown=1"));
    expect("top as another user: exit 1, permission denied", has("top other exit=1 refused=1"));
    expect(
        "the tree's ps during a write hold: its stalls exact, the holder and its stack named under the unit (rvm-testkit unit-readers)",
        has("unit-readers exit=0"),
    );
    expect(
        "the service stopped, the socket unit still holds the port: a user's own listener fails",
        lines.iter().any(|l| l.starts_with("squat service-stopped socket=active | ") && l.contains("Address already in use")),
    );
    expect(
        "… on IPv6's loopback too ([::1]:19361, which localhost:19361 tries first)",
        lines.iter().any(|l| l.starts_with("squat6 service-stopped socket=active | ") && l.contains("Address already in use")),
    );
    expect("a connection to the socket starts the service", has("activation healthz=200 active=active"));
    expect(
        "a service failing at every start is restarted for ever (StartLimitIntervalSec=0) and the port stays held",
        lines.iter().any(|l| {
            l.strip_prefix("start-limit shipped restarts=").is_some_and(|r| {
                r.split_whitespace().next().and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 5)
                    && r.contains("socket=active | ")
                    && r.contains("Address already in use")
            })
        }),
    );
    expect(
        "… with systemd's default start limit the socket fails and the port is free (what the unit's setting prevents)",
        lines.iter().any(|l| {
            l.starts_with("start-limit default service=")
                && l.contains(" socket=failed socket-result=service-start-limit-hit | ")
                && !l.contains("Address already in use")
        }),
    );
    expect("after the start-limit checks both are active again", has("after-start-limit active=active socket=active"));
    expect(
        "it runs as a dynamic user, not root",
        lines.iter().any(|l| l.starts_with("user=") && !l.starts_with("user=root") && !l.contains("uid=0")),
    );
    expect("CapEff 0 after attaching", has("capeff=0000000000000000"));
    expect(
        "every thread has CapEff 0",
        lines.iter().filter(|l| l.starts_with("thread-capeff=")).count() > 0
            && lines.iter().filter(|l| l.starts_with("thread-capeff=")).all(|l| *l == "thread-capeff=0000000000000000"),
    );
    let entry = format!("healthz| probe {}: fentry (exact)", Point::AccessRemoteVmEntry.name());
    expect("the probes attach in their first modes under the unit", has(&entry));
    expect("patched=no on Debian's 6.12", lines.iter().any(|l| l.starts_with("healthz| patched: no")));
    expect(
        "holders' stacks are shown under the unit (Debian's kernels unwind with ORC), named from root's copy of kallsyms",
        has("healthz| stacks: holders' kernel stacks shown (ORC unwinder, symbols from /run/remote-vm-symbols/kallsyms)"),
    );
    expect("… which no other user can read", has("kallsyms dir=700 other=denied"));
    expect(
        "it serves metrics",
        lines.iter().any(|l| l.strip_prefix("metrics-lines=").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n > 100)),
    );
    expect("systemctl reload (SIGHUP): still active, same process", has("after-reload active=active same-pid=yes"));
    expect("the reload is logged", lines.iter().any(|l| l.starts_with("journal|") && l.contains("SIGHUP: config re-read")));
    expect("a SIGSTOPped daemon is restarted by the watchdog", has("watchdog new-pid=yes restarts=1 active=active"));
    expect("capabilities that cannot be dropped: exit 1", has("capset-denied| status=1"));
    expect("… and one line says why", has("capset-denied-logged=yes"));
    expect("an upgrade with policy-rc.d exit 101 restarts nothing", has("upgrade policy-rc.d=101 restarted=no active=active"));
    expect("an upgrade restarts the running service", has("upgrade policy-rc.d=none restarted=yes active=active"));
    expect("an upgrade starts nothing the operator stopped", has("upgrade-while-stopped active=inactive"));
    let scraped = |prefix: &str| lines.iter().find_map(|l| l.strip_prefix(prefix)).and_then(|n| n.trim().parse::<u32>().ok());
    expect("without the drop-in another network namespace cannot scrape", scraped("fleet without-dropin=") == Some(0));
    expect("with the fleet drop-in (for remote-vm.socket) it can", scraped("fleet with-dropin=").is_some_and(|n| n > 100));
    expect("… and the Unix socket stays", has("fleet socket-kept=200"));
    expect("… only from the addresses IPAddressAllow= names", scraped("fleet other-allowed=") == Some(0));
    expect("TLS under DynamicUser= with LoadCredential= (tls.conf): the service starts", has("tls active=active"));
    expect("… a scrape with the client certificate and the password gets in", has("tls certificate-and-password=200"));
    expect("… a wrong password answers 401", has("tls wrong-password=401"));
    expect("… no client certificate: no handshake", has("tls no-client-certificate=000"));
    expect("… plain HTTP answers 400", has("tls plain-http=400"));
    expect("… an authenticated request gets /stalls over TCP", has("tls stalls-authenticated=200"));
    expect("… systemctl reload re-reads the web config and keeps serving", has("tls after-reload=200"));
    expect(
        "… the journal says it serves https with client certificates and basic auth",
        lines.iter().any(|l| l.starts_with("journal|") && l.contains("serving https://") && l.contains("client certificates RequireAndVerifyClientCert (1 CA), basic auth (1 users)")),
    );
    expect("… and that SIGHUP re-read the web config", lines.iter().any(|l| l.starts_with("journal|") && l.contains("SIGHUP: web config re-read: TLS")));
    expect("journalctl -p warning shows the degraded warning", has("journal-warning-degraded=yes"));
    expect("… and not the info lines", !has("journal-info-shown-as-warning=yes") && has("journal-info=yes"));
    expect(
        "self_stats = true without the drop-in: the daemon serves and /healthz says CAP_SYS_ADMIN is needed",
        lines.iter().any(|l| l.starts_with("costs without-dropin active=active | probe costs: absent (BPF_ENABLE_STATS: ") && l.contains("needs CAP_SYS_ADMIN")),
    );
    expect(
        "… with the shipped self-stats.conf the kernel collects",
        has("costs with-dropin active=active | probe costs: collected (self_stats = true: this daemon switched the kernel's BPF run-time statistics on)"),
    );
    expect("… and every capability is still dropped once attached", has("costs capeff=0000000000000000"));
    expect("systemctl stop: clean exit", has("stopped result=success status=0"));
    expect("the check ran to the end", has("done"));
    let soak = lines.iter().find_map(|l| l.strip_prefix("cgroup-soak-result ")).and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok());
    if soak_seconds > 0 {
        expect("the abuse soak's systemd side ran (rvm-testkit cgroup-soak exit 0)", has("cgroup-soak exit=0") && soak.is_some());
    }
    if let Some(soak) = &soak {
        let table = cgsoak::table(soak, &kernel.origin);
        std::fs::write(dir.join("cgroup-soak.md"), &table)?;
        say!("systemd: the abuse soak's systemd side ({}):\n{table}", dir.join("cgroup-soak.md").display());
        failures.extend(cgsoak::failures(soak));
    }
    if !failures.is_empty() {
        for f in &failures {
            say!("systemd: FAIL: {f}");
        }
        bail!(
            "the unit under systemd on {}: {} checks failed; console {} ends:\n{}",
            release.name,
            failures.len(),
            console.display(),
            vm::tail(&console, 15)
        );
    }
    say!("systemd: ok: {}: the unit ran for real under systemd in {:.0} s (active, dynamic user, CapEff 0 on every thread, probes attached, the socket unit: /stalls on the Unix socket for its group only, no squatting, activation, the start limit; reload, watchdog restart, capset denied → exit 1, journal priorities, upgrades under policy-rc.d, the fleet socket drop-in, TLS and basic auth through LoadCredential=, {}clean stop)", release.name, started.elapsed().as_secs_f64(), if soak_seconds > 0 { "the abuse soak's systemd side, " } else { "" });
    Ok(())
}
