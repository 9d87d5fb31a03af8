#!/usr/bin/env bash
# The Azure ML side of `slmops azureml submit`: run in the job's copy of the repository (no .git),
#
#   scripts/azureml-job.sh RESULTS_DIR
#
# pull what the DVC remote has (outputs and the run-cache), reproduce, push, then copy dvc.lock and every
# `cache: false` output of dvc.yaml (metrics, plots, reports, data/endpoint.json: `dvc push` does not carry
# them) into RESULTS_DIR, the job's named output `results`, which the submitting side downloads.
#
# Environment (names and ids only, set by the job definition): AZURE_STORAGE_ACCOUNT (the DVC remote's account),
# AZURE_CLIENT_ID (a user-assigned identity; none: the compute's system-assigned one), AZURE_TOKEN_CREDENTIALS.
# TEACHER_KEY_VAULT_URL + TEACHER_KEY_SECRET + TEACHER_KEY_ENV: an endpoint teacher's key, read from Key Vault
# with the compute's identity into the variable TEACHER_KEY_ENV names; never part of the job definition.
# SLMOPS_AZUREML_TRAINING (the config) + AZUREML_GIT_COMMIT: set when azureml.yaml asks for several nodes; distill
# and finetune then train as multi-node child jobs and bring their outputs back (slmops.train.parallel).
set -euo pipefail
mkdir -p "${1:?usage: scripts/azureml-job.sh RESULTS_DIR}"
out="$(cd "$1" && pwd)"
cd "$(dirname "$0")/.."
export DVC_NO_ANALYTICS=1

if [ -n "${TEACHER_KEY_VAULT_URL:-}" ]; then
  key_env="${TEACHER_KEY_ENV:?TEACHER_KEY_VAULT_URL is set: TEACHER_KEY_ENV must name the teacher key variable}"
  value="$(python -m slmops.azureml secret "$TEACHER_KEY_VAULT_URL" "${TEACHER_KEY_SECRET:?}")"
  export "$key_env=$value"
  unset value
fi

# The snapshot carries no .git: DVC works without git only when told so (DVC_NO_SCM is not a DVC variable).
dvc config --local core.no_scm true
if [ -n "$(dvc remote list)" ]; then
  # What the remote lacks (a new stage, a changed param) is rebuilt by dvc repro below.
  dvc pull --allow-missing --run-cache || echo "dvc pull: some outputs are not on the remote yet; they will be rebuilt"
fi
dvc repro
if [ -n "$(dvc remote list)" ]; then
  dvc push --run-cache
else
  echo "no DVC remote: the models stay in this job (only the results output comes back)"
fi

cp dvc.lock "$out/"
python -m slmops.azureml uncached-outputs | while IFS= read -r path; do
  if [ -e "$path" ]; then
    mkdir -p "$out/$(dirname "$path")"
    cp -R "$path" "$out/$(dirname "$path")/"
  fi
done
echo "results in $out: dvc.lock and the cache: false outputs of dvc.yaml"
