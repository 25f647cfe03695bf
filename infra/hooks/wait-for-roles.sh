#!/bin/sh
# azd postprovision hook: wait until the signed-in principal's Key Vault role, assigned by
# the template just now, reaches the data plane. New assignments can take minutes; until
# then `az keyvault secret set` (docs/deploy.md, step 2) is refused with 403.
# The code deploy does not wait on any role of yours: on Flex Consumption azd posts the
# package to the app's /api/publish endpoint (Azure/azure-dev
# cli/azd/pkg/azapi/function_app.go, DeployFunctionAppUsingZipFileFlexConsumption) and the
# platform writes it to the deployment container as the app's own identity.
# Bounded: it gives up after WAIT_FOR_ROLES_SECONDS (default 300) with a warning, never
# failing the provision.
set -u
limit=${WAIT_FOR_ROLES_SECONDS:-300}
interval=${WAIT_FOR_ROLES_INTERVAL:-10}

if ! command -v az >/dev/null 2>&1; then
  echo "wait-for-roles: no Azure CLI (az); if 'az keyvault secret set' gets a 403, wait a few minutes and retry."
  exit 0
fi
if [ -z "${AZURE_PRINCIPAL_ID:-}" ] || [ -z "${AZURE_KEY_VAULT_NAME:-}" ]; then
  echo "wait-for-roles: no AZURE_PRINCIPAL_ID or AZURE_KEY_VAULT_NAME, so no Key Vault role of yours to wait for."
  exit 0
fi

can_reach() {
  az keyvault secret list --vault-name "$AZURE_KEY_VAULT_NAME" --maxresults 1 --output none 2>/dev/null
}

waited=0
until can_reach; do
  if [ "$waited" -ge "$limit" ]; then
    echo "wait-for-roles: the Key Vault role is still not effective after ${limit} s; if 'az keyvault secret set' gets a 403, wait a few minutes and retry."
    exit 0
  fi
  echo "wait-for-roles: waiting for Key Vault access (${waited} s)..."
  sleep "$interval"
  waited=$((waited + interval))
done
echo "wait-for-roles: the Key Vault is reachable."
