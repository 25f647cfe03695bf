#!/bin/sh
# Adds the federated credential the deploy job logs in with. The job runs in the GitHub
# environment `production` (.github/workflows/azure-dev.yml), so GitHub's OIDC token says
# `repo:<owner>/<repo>:environment:production`; `azd pipeline config` creates credentials
# only for branches and pull requests (Azure/azure-dev cli/azd/pkg/pipeline/
# github_provider.go, credentialOptions), and without this one the first deploy fails at
# login. Run by the postprovision hook, and by `azd hooks run postprovision` right after
# `azd pipeline config` (docs/deploy.md). Idempotent: a credential with this subject is
# left as it is.
set -u
environment=${DEPLOY_ENVIRONMENT:-production}
issuer="https://token.actions.githubusercontent.com"
client_id=${AZURE_PIPELINE_CLIENT_ID:-}
msi=${AZURE_PIPELINE_MSI_RESOURCE_ID:-}

if [ -z "$client_id" ] && [ -z "$msi" ]; then
  echo "pipeline-credential: azd pipeline config has not run in this environment; nothing to add."
  exit 0
fi
if ! command -v az >/dev/null 2>&1; then
  echo "pipeline-credential: no Azure CLI (az): add the credential for environment '$environment' yourself (docs/deploy.md)."
  exit 1
fi

repo=${GITHUB_REPOSITORY:-}
if [ -z "$repo" ]; then
  # https://github.com/o/r(.git), git@github.com:o/r(.git), ssh://git@github.com/o/r(.git)
  repo=$(git remote get-url origin 2>/dev/null |
    sed -E 's#^(https://[^/]+/|git@[^:]+:|ssh://git@[^/]+/)##; s#\.git$##')
fi
case "$repo" in
*/*) ;;
*)
  echo "pipeline-credential: cannot tell the GitHub repository (git remote 'origin'); set GITHUB_REPOSITORY=<owner>/<repo>."
  exit 1
  ;;
esac
subject="repo:${repo}:environment:${environment}"
name=$(printf '%s' "${repo}-${environment}" | tr -c 'A-Za-z0-9-' '-')

if [ -n "$msi" ]; then
  # /subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>
  group=$(echo "$msi" | cut -d/ -f5)
  identity=$(echo "$msi" | cut -d/ -f9)
  found=$(az identity federated-credential list --identity-name "$identity" --resource-group "$group" \
    --query "[?subject=='$subject'] | length(@)" --output tsv) || exit 1
  [ "$found" = "0" ] && {
    az identity federated-credential create --name "$name" --identity-name "$identity" \
      --resource-group "$group" --issuer "$issuer" --subject "$subject" \
      --audiences api://AzureADTokenExchange --output none || exit 1
  }
else
  found=$(az ad app federated-credential list --id "$client_id" \
    --query "[?subject=='$subject'] | length(@)" --output tsv) || exit 1
  [ "$found" = "0" ] && {
    az ad app federated-credential create --id "$client_id" --output none --parameters \
      "{\"name\": \"$name\", \"issuer\": \"$issuer\", \"subject\": \"$subject\", \"audiences\": [\"api://AzureADTokenExchange\"], \"description\": \"GitHub environment $environment (infra/hooks/pipeline-credential.sh)\"}" ||
      exit 1
  }
fi
if [ "$found" = "0" ]; then
  echo "pipeline-credential: added the federated credential for $subject."
else
  echo "pipeline-credential: the federated credential for $subject is there."
fi
