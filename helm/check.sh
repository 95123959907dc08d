#!/usr/bin/env bash
# Offline validation of the Helm chart (helm/pkgstream); no cluster needed.
# scripts/test.sh runs it before the services start. Puts the tools in place
# first, each cached so later runs take seconds:
#   helm        `go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION` into
#               $(go env GOPATH)/bin (kept while its module version matches)
#   kubernetes-validate (PyPI, $KUBERNETES_VALIDATE_VERSION) in a venv under
#               $PKGSTREAM_HOME/helm-venv
#   promtool    Debian's prometheus package (scripts/services.sh install)
#   pkgstream   target/debug/pkgstream (cargo build -p pkgstream if missing)
# then runs helm/tests/check.py (what it checks: its docstring, helm/README.md).
#
# PKGSTREAM_RELEASE_BUILD=1 also runs the Containerfile's build step (the
# release binary, minutes) and checks the ConfigMaps with that binary.
# Environment: HELM_VERSION (default v3.22.0), KUBERNETES_VALIDATE_VERSION
# (default 1.37.0), HELM_KUBE_VERSIONS (default 1.25.0,1.37.0: the oldest
# and newest Kubernetes the chart supports), PKGSTREAM_HOME (~/.cache/pkgstream).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
HELM_KUBE_VERSIONS="${HELM_KUBE_VERSIONS:-1.25.0,1.37.0}"
PKGSTREAM_HOME="${PKGSTREAM_HOME:-$HOME/.cache/pkgstream}"

log() { printf '[helm-check] %s\n' "$*" >&2; }
die() { printf '[helm-check] ERROR: %s\n' "$*" >&2; exit 1; }

# helm, built from the Go module proxy once per version.
command -v go >/dev/null || die "go not found: helm is built with 'go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION' (Go >= 1.24)"
gobin="$(go env GOBIN)"
gobin="${gobin:-$(go env GOPATH)/bin}"
helm="$gobin/helm"
if [[ -x "$helm" ]] && go version -m "$helm" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+helm\.sh/helm/v3[[:space:]]+$HELM_VERSION[[:space:]]"; then
  :
else
  log "building helm $HELM_VERSION with go install (first time: several minutes) ..."
  t0=$SECONDS
  go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"
  log "helm $HELM_VERSION built in $((SECONDS - t0))s ($helm)"
fi

# kubernetes-validate in its own venv, reinstalled only when the version changes.
venv="$PKGSTREAM_HOME/helm-venv"
if [[ "$(cat "$venv/.kubernetes-validate-version" 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]]; then
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv ..."
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" PyYAML >&2 \
    || die "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed"
  echo "$KUBERNETES_VALIDATE_VERSION" >"$venv/.kubernetes-validate-version"
fi

command -v promtool >/dev/null || bash scripts/services.sh install prometheus
pkgstream="${PKGSTREAM_BIN:-target/debug/pkgstream}"
[[ -x "$pkgstream" ]] || cargo build -p pkgstream --locked

t0=$SECONDS
"$venv/bin/python" helm/tests/check.py \
  --helm "$helm" \
  --kubernetes-validate "$venv/bin/kubernetes-validate" \
  --promtool "$(command -v promtool)" \
  --pkgstream "$pkgstream" \
  --chart helm/pkgstream \
  --repo . \
  --kube-versions "$HELM_KUBE_VERSIONS" \
  ${PKGSTREAM_RELEASE_BUILD:+--release-build}
rc=$?
log "chart checks took $((SECONDS - t0))s"
exit "$rc"
