//! What the bench writes into the lab: the bind shim loaded into wrk (C),
//! wrk's report script (Lua), and the nginx, `HAProxy`, nftables and lbd
//! configurations.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use lb_tests::lab::DrLab;

use crate::HTTP_PORT;

/// The bind shim loaded into wrk: each `connect()` to IPv4 first binds the
/// socket to the next client source address (port chosen at connect time);
/// with `BENCH_DIRECT` set, connections to `BENCH_VIP` go to one of those
/// real servers instead, picked by the same hash as
/// [`direct_pick`](crate::direct_pick).
pub const BIND_SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static uint32_t first_src, src_count, vip, real_count;
static uint32_t reals[8];
static unsigned long next_src;

static uint32_t parse_addr(const char *s) {
    struct in_addr a;
    if (s == NULL || inet_pton(AF_INET, s, &a) != 1) return 0;
    return ntohl(a.s_addr);
}

__attribute__((constructor)) static void init(void) {
    real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    first_src = parse_addr(getenv("BENCH_SRC_FIRST"));
    const char *n = getenv("BENCH_SRC_COUNT");
    src_count = n ? (uint32_t)strtoul(n, NULL, 10) : 0;
    vip = parse_addr(getenv("BENCH_VIP"));
    const char *d = getenv("BENCH_DIRECT");
    if (d != NULL) {
        char buf[256];
        strncpy(buf, d, sizeof buf - 1);
        buf[sizeof buf - 1] = 0;
        for (char *t = strtok(buf, ","); t != NULL && real_count < 8; t = strtok(NULL, ","))
            reals[real_count++] = parse_addr(t);
    }
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    if (real_connect == NULL) { errno = ENOSYS; return -1; }
    if (addr == NULL || addr->sa_family != AF_INET || src_count == 0 || len < sizeof(struct sockaddr_in))
        return real_connect(fd, addr, len);
    struct sockaddr_in dst;
    memcpy(&dst, addr, sizeof dst);
    uint32_t src = first_src + (uint32_t)(__atomic_fetch_add(&next_src, 1, __ATOMIC_RELAXED) % src_count);
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in me;
    memset(&me, 0, sizeof me);
    me.sin_family = AF_INET;
    me.sin_addr.s_addr = htonl(src);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) != 0) return -1;
    if (real_count > 0 && ntohl(dst.sin_addr.s_addr) == vip) {
        uint32_t pick = ((src * 0x9E3779B1u) >> 16) % real_count;
        dst.sin_addr.s_addr = htonl(reals[pick]);
    }
    return real_connect(fd, (struct sockaddr *)&dst, sizeof dst);
}
"#;

/// wrk script: one machine-readable line at the end.
pub(crate) const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH-RESULT %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(99.0)))
end
"#;

pub(crate) fn nginx_conf(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nworker_rlimit_nofile 65536;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  \
         fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  \
         keepalive_requests 100000000;\n  keepalive_timeout 120s;\n  \
         server {{\n    listen {HTTP_PORT} backlog=4096;\n    \
         location / {{ default_type text/plain; return 200 \"{name}\\n\"; }}\n  }}\n}}\n"
    )
}

pub(crate) fn haproxy_conf(dir: &Path, vip: Ipv4Addr, reals: &[Ipv4Addr]) -> String {
    let mut servers = String::new();
    for (i, r) in reals.iter().enumerate() {
        let _ = writeln!(servers, "    server rs{} {r}:{HTTP_PORT}", i + 1);
    }
    format!(
        "global\n    nbthread 1\n    maxconn 8000\n    pidfile {}/haproxy.pid\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
         frontend bench\n    bind {vip}:{HTTP_PORT}\n    default_backend reals\n\n\
         backend reals\n    balance source\n    hash-type consistent\n{servers}",
        dir.display()
    )
}

pub(crate) fn nft_rules(vip: Ipv4Addr, reals: &[Ipv4Addr]) -> String {
    let map = reals
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{i} : {r}"))
        .collect::<Vec<_>>()
        .join(", ");
    let set = reals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip lbbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {vip} tcp dport {HTTP_PORT} dnat to jhash ip saddr mod {} map {{ {map} }}\n  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip daddr {{ {set} }} tcp dport {HTTP_PORT} masquerade\n  }}\n}}\n",
        reals.len()
    )
}

/// An lbd configuration for the lab: one service `web` on the VIP.
pub(crate) fn lbd_config(
    dir: &Path,
    name: &str,
    lab: &DrLab,
    health: &str,
    cluster: &str,
) -> String {
    let d = dir.display();
    let mut reals = String::new();
    for i in 0..lab.real_count() {
        let _ = writeln!(
            reals,
            "      - {{ name: {}, address: {} }}",
            lab.real_name(i),
            lab.real_address(i)
        );
    }
    format!(
        "node:\n  name: {name}\n  interface: eth0\n  xdp_mode: native\n  control_socket: {d}/lbd.sock\n  \
         state_dir: {d}/state\n  metrics_listen: 127.0.0.1:9100\n{cluster}\
         services:\n  - name: web\n    vip: {vip}\n    port: {HTTP_PORT}\n    \
         persistence: {{ timeout_s: 3600 }}\n    health_check: {health}\n    real_servers:\n{reals}",
        vip = lab.vip()
    )
}

/// Two lbd configurations of an HA pair in the lab, under `base`: lb1 the
/// primary (priority 150) on the lab's lb, lb2 the secondary (100) on lb2,
/// syncing on `sync_port` with the key `key`, written to `base/cluster.key`.
pub(crate) struct PairFiles {
    pub(crate) d1: std::path::PathBuf,
    pub(crate) d2: std::path::PathBuf,
    pub(crate) c1: String,
    pub(crate) c2: String,
}

/// See [`PairFiles`].
pub(crate) fn pair_files(
    base: &Path,
    lab: &DrLab,
    vrid: u8,
    advert_ms: u64,
    sync_port: u16,
    key: &[u8],
) -> std::io::Result<PairFiles> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    std::fs::create_dir_all(base)?;
    let key_file = base.join("cluster.key");
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_file)?
        .write_all(key)?;
    let (a1, a2) = (lab.lb_address(), lab.lb2_address());
    let cluster = |prio: u8, role: &str, me: std::net::Ipv4Addr, peer: std::net::Ipv4Addr| {
        format!(
            "cluster:\n  vrid: {vrid}\n  priority: {prio}\n  advert_interval_ms: {advert_ms}\n  preempt: true\n  \
             peer: {peer}\n  role: {role}\n  sync:\n    listen: {me}:{sync_port}\n    peer: {peer}:{sync_port}\n    key_file: {}\n",
            key_file.display()
        )
    };
    let (d1, d2) = (base.join("lb1"), base.join("lb2"));
    let c1 = lbd_config(
        &d1,
        "lb1",
        lab,
        "{ type: none }",
        &cluster(150, "primary", a1, a2),
    );
    let c2 = lbd_config(
        &d2,
        "lb2",
        lab,
        "{ type: none }",
        &cluster(100, "secondary", a2, a1),
    );
    Ok(PairFiles { d1, d2, c1, c2 })
}
