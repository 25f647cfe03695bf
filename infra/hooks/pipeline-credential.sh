#!/bin/sh
# Adds the federated credential the deploy job logs in with. The job runs in the GitHub
# environment `production` (.github/workflows/azure-dev.yml), so GitHub's OIDC token says
# `repo:<owner>/<repo>:environment:production`; `azd pipeline config` creates credentials
# only for branches and pull requests (Azure/azure-dev cli/azd/pkg/pipeline/
# github_provider.go, credentialOptions), and without this one the first deploy fails at
# login. Run by the postprovision hook, and by `azd hooks run postprovision` right after
# `azd pipeline config` (docs/deploy.md). Idempotent: a credential with this subject is
# left as it is. Whichever way `azd pipeline config` authenticates the pipeline, the
# credential goes to it: a user-assigned managed identity (its resource id in
# AZURE_PIPELINE_MSI_CLIENT_ID, azd's default) or an app registration
# (AZURE_PIPELINE_CLIENT_ID); names from cli/azd/pkg/pipeline/pipeline_manager.go.
set -u
environment=${DEPLOY_ENVIRONMENT:-production}
issuer="https://token.actions.githubusercontent.com"
client_id=${AZURE_PIPELINE_CLIENT_ID:-}
msi=${AZURE_PIPELINE_MSI_CLIENT_ID:-}

if [ -z "$client_id" ] && [ -z "$msi" ]; then
  echo "pipeline-credential: azd pipeline config has not run in this environment; nothing to add."
  exit 0
fi
if ! command -v az >/dev/null 2>&1; then
  echo "pipeline-credential: no Azure CLI (az): add the credential for environment '$environment' yourself (docs/deploy.md)."
  exit 1
fi

# The repository as GitHub names it (its case included: subjects are compared exactly).
repo=${GITHUB_REPOSITORY:-}
if [ -z "$repo" ] && command -v gh >/dev/null 2>&1; then
  repo=$(gh repo view --json nameWithOwner --jq .nameWithOwner 2>/dev/null)
fi
if [ -z "$repo" ]; then
  remote=$(git remote get-url origin 2>/dev/null)
  case "$remote" in
  https://github.com/* | git@github.com:* | ssh://git@github.com/*)
    repo=$(echo "$remote" | sed -E 's#^(https://github\.com/|git@github\.com:|ssh://git@github\.com/)##; s#/$##; s#\.git$##')
    ;;
  *)
    # GitHub Enterprise Server and ghe.com issue tokens under their own issuer.
    echo "pipeline-credential: the remote 'origin' ($remote) is not on github.com; set GITHUB_REPOSITORY=<owner>/<repo> for a github.com repository, or add the credential yourself."
    exit 1
    ;;
  esac
fi
if ! echo "$repo" | grep -Eq '^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$'; then
  echo "pipeline-credential: '$repo' is not <owner>/<repo>; set GITHUB_REPOSITORY."
  exit 1
fi
subject="repo:${repo}:environment:${environment}"
# Not azd's names (<owner>-<repo>-<branch>), which a branch called like the environment
# would take; at most Entra's 120 characters.
name=$(printf '%s' "${repo}-environment-${environment}" | tr -c 'A-Za-z0-9-' '-' | cut -c1-120)

if [ -n "$msi" ]; then
  # /subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>
  subscription=$(echo "$msi" | cut -d/ -f3)
  group=$(echo "$msi" | cut -d/ -f5)
  identity=$(echo "$msi" | cut -d/ -f9)
  where="--identity-name $identity --resource-group $group --subscription $subscription"
  # shellcheck disable=SC2086 # $where is three options, split on purpose
  found=$(az identity federated-credential list $where \
    --query "[?subject=='$subject'] | length(@)" --output tsv) || exit 1
else
  found=$(az ad app federated-credential list --id "$client_id" \
    --query "[?subject=='$subject'] | length(@)" --output tsv) || exit 1
fi
found=$(printf '%s' "$found" | tr -d '\r\n ')
case "$found" in
0)
  if [ -n "$msi" ]; then
    # shellcheck disable=SC2086
    az identity federated-credential create --name "$name" $where --issuer "$issuer" \
      --subject "$subject" --audiences api://AzureADTokenExchange --output none || exit 1
  else
    az ad app federated-credential create --id "$client_id" --output none --parameters \
      "{\"name\": \"$name\", \"issuer\": \"$issuer\", \"subject\": \"$subject\", \"audiences\": [\"api://AzureADTokenExchange\"], \"description\": \"GitHub environment $environment (infra/hooks/pipeline-credential.sh)\"}" ||
      exit 1
  fi
  echo "pipeline-credential: added the federated credential for $subject."
  ;;
[1-9]*)
  echo "pipeline-credential: the federated credential for $subject is there."
  ;;
*)
  echo "pipeline-credential: az answered '$found' when asked for the credentials; add the one for $subject yourself."
  exit 1
  ;;
esac
