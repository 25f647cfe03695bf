#!/bin/sh
# azd postprovision hook: wait until the role assignments the template just made reach
# the data plane. New assignments can take minutes; until then the package deploy that
# follows `azd provision` and the first `az keyvault secret set` are refused with 403.
# It probes as the signed-in principal (az login), whose roles were assigned in the same
# deployment as the app identity's. Bounded: it gives up after WAIT_FOR_ROLES_SECONDS
# (default 300) with a warning, never failing the provision.
set -u
limit=${WAIT_FOR_ROLES_SECONDS:-300}
interval=${WAIT_FOR_ROLES_INTERVAL:-10}

if ! command -v az >/dev/null 2>&1; then
  echo "wait-for-roles: no Azure CLI (az); if the deploy gets a 403, wait a few minutes and run azd deploy again."
  exit 0
fi
if [ -z "${AZURE_PRINCIPAL_ID:-}" ]; then
  echo "wait-for-roles: no AZURE_PRINCIPAL_ID, so no data roles were assigned to you; nothing to wait for."
  exit 0
fi

can_reach() {
  az storage blob list --auth-mode login --account-name "$AZURE_STORAGE_ACCOUNT_NAME" \
    --container-name "$AZURE_DEPLOYMENT_CONTAINER" --num-results 1 --output none 2>/dev/null &&
    az keyvault secret list --vault-name "$AZURE_KEY_VAULT_NAME" --maxresults 1 --output none 2>/dev/null
}

waited=0
until can_reach; do
  if [ "$waited" -ge "$limit" ]; then
    echo "wait-for-roles: roles still not effective after ${limit} s; if the deploy or 'az keyvault secret set' gets a 403, wait a few minutes and retry."
    exit 0
  fi
  echo "wait-for-roles: waiting for storage and Key Vault access (${waited} s)..."
  sleep "$interval"
  waited=$((waited + interval))
done
echo "wait-for-roles: storage and Key Vault are reachable."
