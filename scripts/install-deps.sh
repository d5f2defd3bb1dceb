#!/usr/bin/env bash
# Installs what the builds and tests need when it is missing, on Debian: etcd, ZooKeeper,
# dnsmasq, promtool, protoc and protobuf's well-known .proto files (etcd-client's build script),
# HAProxy (the HTTP/1 conformance suite's differential), curl (used by `make run`), openssl (test
# certificates), and Python 3 with venv (the chart tests' virtualenv). Idempotent: does nothing
# when everything is there.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have etcd     || need+=(etcd-server)
have etcdctl  || need+=(etcd-client)
# ZooKeeper's server (and zkCli.sh) on the JVM, started by the tests themselves.
{ have java && [ -f /usr/share/java/zookeeper.jar ] && [ -x /usr/share/zookeeper/bin/zkCli.sh ]; } || need+=(zookeeper)
have dnsmasq  || need+=(dnsmasq-base)
have promtool || need+=(prometheus)
have protoc   || need+=(protobuf-compiler)
# etcd-client's build script compiles etcd's protos, which import protobuf's well-known types.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
have haproxy  || need+=(haproxy)
have curl     || need+=(curl)
# The etcd and Consul TLS tests make their certificates with it. (No Consul binary is packaged
# for Debian, PyPI, npm or crates.io: the Consul tests run against an in-process double.)
have openssl  || need+=(openssl)
have python3  || need+=(python3)
# tests/helm/run.sh makes a virtualenv: Debian's python3 needs python3-venv for that.
if ! have python3 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts services it installs; the tests start their own on free ports.
for svc in etcd zookeeper prometheus prometheus-node-exporter haproxy; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
