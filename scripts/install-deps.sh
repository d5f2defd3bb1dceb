#!/usr/bin/env bash
# Installs what the tests need when it is missing, on Debian: etcd, dnsmasq, promtool, protoc
# (for the registry backends' tests), HAProxy (the HTTP/1 conformance suite's differential),
# curl (used by `make run`), and Python 3 with venv (the chart tests' virtualenv). Idempotent:
# does nothing when everything is there.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have etcd     || need+=(etcd-server)
have dnsmasq  || need+=(dnsmasq-base)
have promtool || need+=(prometheus)
have protoc   || need+=(protobuf-compiler)
have haproxy  || need+=(haproxy)
have curl     || need+=(curl)
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
for svc in etcd prometheus prometheus-node-exporter haproxy; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
