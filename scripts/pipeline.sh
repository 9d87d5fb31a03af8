#!/usr/bin/env bash
# What CI does with the pipeline, runnable the same way on a laptop:
#
#   scripts/pipeline.sh pr BASE_REF    pull what the remote has, reproduce, push, time the base's package beside
#                                      the head's (scripts/base_package.sh), report against BASE_REF, create or
#                                      update the one pull-request comment; exit 1 if a gate fails
#   scripts/pipeline.sh main           pull, reproduce, push the DVC cache
#
# PIPELINE_BACKEND=runner (default): dvc repro here. PIPELINE_BACKEND=azureml: `slmops azureml submit` runs the same
# pull/repro/push as one Azure ML job (azureml.yaml), copies its dvc.lock and reports into this checkout, and the
# package is pulled from the DVC remote; the rest (speed, report, comment) is the same.
#
# Optional environment: DVC remote credentials (AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with
# AZURE_STORAGE_KEY / an Azure identity: AZURE_CLIENT_ID, AZURE_TOKEN_CREDENTIALS, or a managed identity's
# endpoint): without them nothing is pulled or pushed. GH_TOKEN, GITHUB_REPOSITORY and PR_NUMBER: without them the
# report is written to reports/pr/report.md and not posted.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: scripts/pipeline.sh pr BASE_REF | main"
# Arguments checked before any work (an install, a whole Azure ML job): bad ones exit 2, as bad input does.
mode="${1:-}"
case "$mode" in
  pr) [ -n "${2:-}" ] || { echo "$usage: pr needs the base branch" >&2; exit 2; } ;;
  main) ;;
  *) echo "$usage (not '$mode')" >&2; exit 2 ;;
esac
backend="${PIPELINE_BACKEND:-runner}"
case "$backend" in
  runner | azureml) ;;
  *) echo "PIPELINE_BACKEND must be runner or azureml, not '$backend'" >&2; exit 2 ;;
esac
make install
# shellcheck disable=SC1091
. .venv/bin/activate

has_remote() { [ -n "$(dvc remote list)" ]; }
# A key, a connection string, a client id, or an identity with no secret at all: a system-assigned managed identity
# (Azure ML compute, a VM: IDENTITY_ENDPOINT / MSI_ENDPOINT) or a credential named in AZURE_TOKEN_CREDENTIALS
# (the Azure CLI after azure/login) with the account AZURE_STORAGE_ACCOUNT.
has_credentials() {
  [ -n "${AZURE_STORAGE_CONNECTION_STRING:-}${AZURE_STORAGE_KEY:-}${AZURE_CLIENT_ID:-}" ] ||
    { [ -n "${AZURE_STORAGE_ACCOUNT:-}" ] &&
      [ -n "${AZURE_TOKEN_CREDENTIALS:-}${IDENTITY_ENDPOINT:-}${MSI_ENDPOINT:-}" ]; }
}

# In a GitHub job with id-token: write, DVC signs in with a GitHub OIDC token fetched now (WorkloadIdentityCredential
# reads it from AZURE_FEDERATED_TOKEN_FILE): after a job longer than about an hour, the Azure CLI's login by
# azure/login can no longer renew its access token (AADSTS700024). Elsewhere: nothing changes.
use_fresh_github_token() {
  if [ -n "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ] && [ -n "${AZURE_CLIENT_ID:-}" ] && [ -n "${AZURE_TENANT_ID:-}" ]; then
    AZURE_FEDERATED_TOKEN_FILE="${RUNNER_TEMP:-/tmp}/slmops-oidc-token"
    python -m slmops.azureml oidc-token "$AZURE_FEDERATED_TOKEN_FILE"
    export AZURE_FEDERATED_TOKEN_FILE AZURE_TOKEN_CREDENTIALS=WorkloadIdentityCredential
  fi
}

case "$backend" in
  runner)
    if has_remote && has_credentials; then
      # What the remote lacks (a new stage, a changed param) is rebuilt by dvc repro below.
      dvc pull --allow-missing || echo "dvc pull: some outputs are not on the remote yet; they will be rebuilt"
    fi
    dvc repro
    if has_remote && has_credentials; then
      dvc push
    else
      echo "no DVC remote or no credentials: not pushing the cache"
    fi
    ;;
  azureml)
    # Submit, stream, fail on a failed or cancelled job (exit 3), copy dvc.lock and the reports here.
    slmops azureml submit
    if [ "$mode" != main ]; then
      use_fresh_github_token
      dvc pull package  # the job pushed the models; the package is what the speed comparison and artifacts need
    fi
    ;;
esac

if [ "$mode" = main ]; then
  exit 0
fi

base="$2"
git fetch --quiet origin "$base" 2>/dev/null || true
base_rev="origin/$base"
git rev-parse --verify --quiet "$base_rev" >/dev/null || base_rev="$base"
# Speed compared on this machine in this job: the base's package (DVC at the base revision, else rebuilt) timed
# alternately with the head's. Without it the report shows the committed speed figures as context, never a gate.
speed=()
head_package="models/foundry/$(python -c 'from slmops.core.params import load_params; print(load_params().package.name)')"
if base_package="$(scripts/base_package.sh "$base_rev" .slmops/base-package)"; then
  if slmops bench compare "$base_package" "$head_package" --out reports/pr/speed.json; then
    speed=(--speed reports/pr/speed.json)
  else
    echo "slmops bench compare failed: speed shown as context only"
  fi
else
  echo "no package at $base_rev: speed shown as context only"
fi
status=0
slmops report --base "$base_rev" "${speed[@]}" --out reports/pr/report.md > /dev/null || status=$?
if [ "$status" -gt 1 ]; then
  exit "$status"  # not a gate: the report itself failed
fi

if [ -n "${GH_TOKEN:-}" ] && [ -n "${PR_NUMBER:-}" ] && [ -n "${GITHUB_REPOSITORY:-}" ]; then
  comments="repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments"
  marker="<!-- slmops-report -->"
  existing="$(gh api --paginate "$comments" \
    --jq ".[] | select(.body | startswith(\"$marker\")) | .id" | head -n 1)"
  if [ -n "$existing" ]; then
    gh api --method PATCH "repos/$GITHUB_REPOSITORY/issues/comments/$existing" -F body=@reports/pr/report.md > /dev/null
    echo "updated comment $existing"
  else
    gh api --method POST "$comments" -F body=@reports/pr/report.md > /dev/null
    echo "created the report comment"
  fi
else
  echo "GH_TOKEN, GITHUB_REPOSITORY or PR_NUMBER not set: report left in reports/pr/report.md"
fi
exit "$status"
