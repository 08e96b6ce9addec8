//! The configurations of the proxies braid is measured against: HAProxy with one thread and
//! nginx with one process, both plain reverse proxies to the upstream's port that is not
//! redirected, with upstream keep-alive, on HTTP/1.1 and h2c listeners.

use crate::pods::SERVER_IP;

/// HAProxy: 127.0.0.1:8181 (HTTP/1.1) and 8183 (h2c, and h2c to the upstream).
pub fn haproxy_cfg() -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  \
         timeout client 30s\n  timeout server 30s\n  http-reuse always\nfrontend f\n  \
         bind 127.0.0.1:8181\n  default_backend b\nbackend b\n  server s1 {SERVER_IP}:9080\n\
         frontend f2\n  bind 127.0.0.1:8183 proto h2\n  default_backend b2\nbackend b2\n  \
         server s2 {SERVER_IP}:9080 proto h2\n"
    )
}

/// nginx: 127.0.0.1:8282 (HTTP/1.1) and 8283 (h2c; HTTP/1.1 to the upstream), its temporary
/// files under `prefix`.
pub fn nginx_conf(prefix: &str) -> String {
    format!(
        "master_process off;\ndaemon off;\npid {prefix}/nginx.pid;\nevents {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n  \
         fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n  \
         upstream u {{ server {SERVER_IP}:9080; keepalive 128; keepalive_requests 100000000; }}\n  \
         server {{ listen 127.0.0.1:8282; location / {{ proxy_pass http://u; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }} }}\n  \
         server {{ listen 127.0.0.1:8283 http2; location / {{ proxy_pass http://u; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }} }}\n}}\n"
    )
}
